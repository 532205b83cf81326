import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.cloud.classes import StorageClass
from peercloud.cloud.document import ADMIN, MEMBER, CloudDoc, Invite, Member, SignedDoc, supersedes
from peercloud.cloud.durations import parse_duration
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
    joiner = Identity.generate()
    v2 = SignedDoc.create(v1.doc.with_member(Member(joiner.peer_id, MEMBER, 5)), admin)
    assert v2.doc.seq == 2 and supersedes(v1, v2) and not supersedes(v2, v1)


def test_tampered_or_forged_documents_are_refused() -> None:
    admin, v1 = cloud()
    raw = bytearray(v1.encode())
    raw[raw.index(b"home")] ^= 1  # flip a bit inside the signed body
    with pytest.raises(IntegrityError, match="forged or altered"):
        SignedDoc.decode(bytes(raw))
    member = Identity.generate()
    v2 = SignedDoc.create(v1.doc.with_member(Member(member.peer_id, MEMBER, 5)), admin)
    # A member who rewrites the document to make itself admin: not an admin in the version held.
    forged_doc = v2.doc.with_member(Member(member.peer_id, ADMIN, 5))
    with pytest.raises(RefusedError, match="not an admin"):
        supersedes(v2, SignedDoc.create(forged_doc, member))
    # A document signed by someone who is not an admin inside it is malformed on its face.
    outsider = Identity.generate()
    with pytest.raises(IntegrityError, match="not an admin in it"):
        SignedDoc.decode(SignedDoc.create(v2.doc.evolve(), outsider).encode())
    _, other = cloud()
    with pytest.raises(RefusedError, match="another cloud"):
        supersedes(v1, other)


def test_concurrent_versions_converge() -> None:
    admin, v1 = cloud()
    a = SignedDoc.create(v1.doc.with_member(Member(Identity.generate().peer_id, MEMBER, 1)), admin)
    b = SignedDoc.create(v1.doc.with_member(Member(Identity.generate().peer_id, MEMBER, 1)), admin)
    assert supersedes(a, b) != supersedes(b, a)  # exactly one wins, the same one everywhere


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
