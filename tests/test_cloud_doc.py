import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.cloud.classes import StorageClass
from peercloud.cloud.document import ADMIN, MEMBER, CloudDoc, Invite, Member, SignedDoc
from peercloud.cloud.durations import parse_duration
from peercloud.cloud.history import check_child, rebase, seniority, wins
from peercloud.errors import FormatError, IntegrityError, RefusedError, UsageError
from peercloud.identity import Identity


def cloud() -> tuple[Identity, SignedDoc]:
    admin = Identity.generate()
    doc = CloudDoc.genesis("home", Member(admin.peer_id, ADMIN, 10**9, (("site", "home"),), ("127.0.0.1:1",)))
    return admin, SignedDoc.create(doc, admin)


def test_round_trip_and_versions() -> None:
    admin, v1 = cloud()
    assert SignedDoc.decode(v1.encode()) == v1
    assert [c.name for c in v1.doc.classes] == ["replica-1", "replica-2", "replica-3", "ec-2+1", "ec-4+2"]
    assert v1.doc.members[0].admin_since == 1 and v1.doc.prev == b""
    joiner = Identity.generate()
    v2 = SignedDoc.create(v1.doc.with_member(Member(joiner.peer_id, MEMBER, 5)), admin)
    assert v2.doc.seq == 2 and v2.doc.prev == v1.digest
    check_child(v1, v2)
    with pytest.raises(RefusedError, match="does not follow"):
        check_child(v2, v1)


def test_tampered_or_forged_documents_are_refused() -> None:
    admin, v1 = cloud()
    raw = bytearray(v1.encode())
    raw[raw.index(b"home")] ^= 1  # flip a bit inside the signed body
    with pytest.raises(IntegrityError, match="forged or altered"):
        SignedDoc.decode(bytes(raw))
    member = Identity.generate()
    v2 = SignedDoc.create(v1.doc.with_member(Member(member.peer_id, MEMBER, 5)), admin)
    # A member who rewrites the document to make itself admin: not an admin of the parent.
    forged = SignedDoc.create(v2.doc.with_role(member.peer_id, ADMIN), member)
    with pytest.raises(RefusedError, match="not an admin of version 2"):
        check_child(v2, forged)
    # A first version signed by someone who is not its founder is malformed on its face.
    outsider = Identity.generate()
    genesis = CloudDoc.genesis("x", Member(Identity.generate().peer_id, ADMIN, 1))
    with pytest.raises(IntegrityError, match="not its founder"):
        SignedDoc.decode(SignedDoc.create(genesis, outsider).encode())
    _, other = cloud()
    with pytest.raises(RefusedError, match="another cloud"):
        check_child(v1, other)


def test_an_admin_may_sign_its_own_departure_and_promotions_rank_admins() -> None:
    founder, v1 = cloud()
    second = Identity.generate()
    v2 = SignedDoc.create(v1.doc.with_member(Member(second.peer_id, MEMBER, 5)), founder)
    v3 = SignedDoc.create(v2.doc.with_role(second.peer_id, ADMIN), founder)
    assert v3.doc.member(second.peer_id).admin_since == 3  # type: ignore[union-attr]
    v4 = SignedDoc.create(v3.doc.without_member(founder.peer_id), founder)  # the founder leaves
    check_child(v3, v4)  # signed by an admin of its parent: valid
    assert seniority(v3.doc, founder.peer_id) < seniority(v3.doc, second.peer_id)
    with pytest.raises(UsageError, match="already an admin"):
        v3.doc.with_role(second.peer_id, ADMIN)


def test_concurrent_versions_converge_and_a_removed_admin_loses() -> None:
    founder, v1 = cloud()
    second = Identity.generate()
    v2 = SignedDoc.create(v1.doc.with_member(Member(second.peer_id, MEMBER, 1)), founder)
    v3 = SignedDoc.create(v2.doc.with_role(second.peer_id, ADMIN), founder)
    # Two admins edit at once: exactly one child wins, the same one whichever is seen first.
    a = SignedDoc.create(v3.doc.with_member(Member(Identity.generate().peer_id, MEMBER, 1)), founder)
    b = SignedDoc.create(v3.doc.with_member(Member(Identity.generate().peer_id, MEMBER, 1)), second)
    assert wins(a, b, v3) != wins(b, a, v3)
    # The loser's change is made again on top of the winner: both new members are in.
    winner, loser = (a, b) if wins(a, b, v3) else (b, a)
    redone = rebase(v3.doc, loser.doc, winner.doc)
    assert redone is not None and len(redone.members) == 4 and redone.prev == winner.digest
    assert rebase(v3.doc, winner.doc, winner.doc) is None  # a change the winner already made: nothing
    # The founder removes the second admin; the second admin, on the same parent, adds a member:
    # the removal wins, whatever the hashes.
    ousting = SignedDoc.create(v3.doc.without_member(second.peer_id), founder)
    rogue = SignedDoc.create(v3.doc.with_member(Member(Identity.generate().peer_id, MEMBER, 1)), second)
    assert wins(ousting, rogue, v3) and not wins(rogue, ousting, v3)
    # Each removes the other: the senior admin (the founder) wins.
    mutiny = SignedDoc.create(v3.doc.without_member(founder.peer_id), second)
    assert wins(ousting, mutiny, v3) and not wins(mutiny, ousting, v3)


def test_no_admin_left_is_refused() -> None:
    admin, v1 = cloud()
    with pytest.raises(RefusedError, match="no admin"):
        v1.doc.without_member(admin.peer_id)


def test_invite_round_trip_and_typos() -> None:
    admin, v1 = cloud()
    invite = Invite(v1.doc.cloud_id, admin.peer_id, ("127.0.0.1:4650",), b"s" * 32, time.time() + 60)
    assert Invite.parse(str(invite)) == invite
    text = str(invite)
    with pytest.raises(UsageError, match="checksum"):
        Invite.parse(text[:-3] + ("a" if text[-3] != "a" else "b") + text[-2:])
    with pytest.raises(UsageError):
        Invite.parse("pcinv1_" + "a" * 20)


def test_class_rules_and_durations() -> None:
    assert StorageClass("r", replicas=2, max_replicas=4).describe() == "2 full copies (up to 4)"
    assert StorageClass("e", k=4, m=2).overhead == 1.5
    for bad in (dict(replicas=2, k=1), dict(replicas=3, max_replicas=2), dict(k=0), dict(replicas=1, grace=-1)):
        with pytest.raises(UsageError):
            StorageClass("x", **bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="erasure code needs k >= 1"):
        StorageClass("x", k=0, m=1)  # `--ec 0+1`: about k, not "replicas or erasure code"
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    with pytest.raises(UsageError):
        parse_duration("soon")
    with pytest.raises(UsageError, match="give a unit"):
        parse_duration("5")  # seconds or days? a unit is required


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_decoder_rejects_garbage_cleanly(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        SignedDoc.decode(data)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["doc", "sig", "signer", "x"]), st.binary(max_size=64), max_size=4))
def test_decoder_rejects_structured_garbage(body: dict[str, bytes]) -> None:
    with pytest.raises(IntegrityError):
        SignedDoc.decode(msgpack.packb(body))


@settings(max_examples=200)
@given(st.binary(max_size=512))
def test_document_body_decoder_only_raises_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        CloudDoc.decode(data)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_invite_parser_rejects_garbage_cleanly(data: bytes) -> None:
    from peercloud import textid

    with pytest.raises(UsageError):
        Invite.parse(textid.encode("pcinv1", data))  # a well-formed wrapper around junk
    with pytest.raises(UsageError):
        Invite.parse(data.decode("latin-1"))
