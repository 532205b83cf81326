"""The document chain's pure rules (cloud/history.py): deep forks judged by whole branches,
re-applied changes that never bring back a role, checked seniority, bounded version numbers."""

from collections.abc import Callable
from dataclasses import replace
from itertools import permutations
from pathlib import Path

import pytest

from peercloud.cloud.document import ADMIN, MAX_SEQ, MEMBER, CloudDoc, Member, SignedDoc
from peercloud.cloud.history import branch_wins, check_child, rebase, wins
from peercloud.errors import FormatError, RefusedError
from peercloud.identity import Identity, PeerId
from peercloud.store.index import Index
from peercloud.wire import messages as m


def sign(doc: CloudDoc, who: Identity) -> SignedDoc:
    """Signed, then read back as a receiving peer reads it."""
    return SignedDoc.decode(SignedDoc.create(doc, who).encode())


def newcomer(offer: int = 1) -> Member:
    return Member(Identity.generate().peer_id, MEMBER, offer)


class Cloud:
    """Version 5 of a cloud: admins a (founder, since 1), r (since 3), j (since 5); member m."""

    def __init__(self) -> None:
        self.a, self.r, self.j, self.m = (Identity.generate() for _ in range(4))
        v1 = sign(CloudDoc.genesis("home", Member(self.a.peer_id, ADMIN, 1)), self.a)
        v2 = sign(v1.doc.evolve([*v1.doc.members, *(Member(x.peer_id, MEMBER, 1) for x in (self.r, self.j))]), self.a)
        v3 = sign(v2.doc.with_role(self.r.peer_id, ADMIN), self.a)
        v4 = sign(v3.doc.with_member(Member(self.m.peer_id, MEMBER, 1)), self.r)
        v5 = sign(v4.doc.with_role(self.j.peer_id, ADMIN), self.a)
        for parent, child in ((v1, v2), (v2, v3), (v3, v4), (v4, v5)):
            check_child(parent, child)
        self.base = v5

    def chain(self, *steps: tuple[Identity, "Step"]) -> list[SignedDoc]:
        """A branch on the base: each step builds a document on the previous version and signs it."""
        out: list[SignedDoc] = []
        parent = self.base
        for who, step in steps:
            child = sign(step(parent.doc), who)
            check_child(parent, child)
            out.append(child)
            parent = child
        return out


Step = Callable[[CloudDoc], CloudDoc]


def add() -> Step:
    member = newcomer()
    return lambda d: d.with_member(member)


def remove(p: PeerId) -> Step:
    return lambda d: d.without_member(p)


def role(p: PeerId, r: str) -> Step:
    return lambda d: d.with_role(p, r)


def exactly_one_wins(base: SignedDoc, xs: list[SignedDoc], ys: list[SignedDoc]) -> bool:
    """Whether xs wins; asserts the verdict is the same seen from either side."""
    x = branch_wins(base, xs, ys)
    assert x != branch_wins(base, ys, xs)
    return x


def test_a_removed_admin_cannot_win_from_a_version_before_its_removal() -> None:
    c = Cloud()
    # Ours: j adds a member, then the founder removes r. r, from the base (where it was still
    # admin), removes j: its first version ousts the signer of our first version.
    ours = c.chain((c.j, add()), (c.a, remove(c.r.peer_id)))
    rogue = c.chain((c.r, remove(c.j.peer_id)))
    assert wins(rogue[0], ours[0], c.base)  # judged by first versions alone, r's fork would win
    # Judged whole: each branch ousts a signer of the other; the founder's removal is senior.
    assert exactly_one_wins(c.base, ours, rogue)
    # A rogue branch that ousts nobody loses to our removal of its signer, whatever its hash.
    for _ in range(8):
        quiet = c.chain((c.r, add()), (c.r, add()))
        assert exactly_one_wins(c.base, ours, quiet)
    # Demoted rather than removed: the same.
    demoted = c.chain((c.j, add()), (c.a, role(c.r.peer_id, MEMBER)))
    assert exactly_one_wins(c.base, demoted, rogue)


def test_their_branch_wins_when_it_ousts_a_signer_of_ours_later() -> None:
    c = Cloud()
    for _ in range(8):
        ours = c.chain((c.r, add()))
        theirs = c.chain((c.j, add()), (c.a, role(c.r.peer_id, MEMBER)))
        assert exactly_one_wins(c.base, theirs, ours)


def test_without_removals_the_first_versions_hash_decides_and_all_pairs_agree() -> None:
    c = Cloud()
    ours = c.chain((c.j, add()), (c.j, add()))
    # In their branch m is made admin and signs: m was no admin at the base, so our branch,
    # where m stays a member, ousts nobody of theirs.
    theirs = c.chain((c.a, role(c.m.peer_id, ADMIN)), (c.m, add()))
    assert exactly_one_wins(c.base, ours, theirs) == (ours[0].digest < theirs[0].digest)
    # Any set of branches: every pair has exactly one winner, from either side.
    branches = [
        ours,
        theirs,
        c.chain((c.r, remove(c.j.peer_id))),
        c.chain((c.j, remove(c.r.peer_id))),
        c.chain((c.a, add()), (c.a, remove(c.r.peer_id))),
    ]
    for xs, ys in permutations(branches, 2):
        exactly_one_wins(c.base, xs, ys)
    # Mutual removal between first versions: the senior admin (r, since 3) beats j (since 5).
    assert exactly_one_wins(c.base, branches[2], branches[3])


def test_rebase_never_brings_back_a_role_nor_undoes_a_promotion() -> None:
    c = Cloud()
    base = c.base.doc
    r_entry, m_entry = base.member(c.r.peer_id), base.member(c.m.peer_id)
    assert r_entry is not None and m_entry is not None
    # The winner demotes r; our change (j's) refreshed r's addresses: r stays demoted.
    winner = sign(base.with_role(c.r.peer_id, MEMBER), c.a)
    mine = base.with_member(replace(r_entry, addresses=("10.0.0.9:4650",)))
    redone = rebase(base, mine, winner.doc)
    assert redone is not None
    assert redone.member(c.r.peer_id) == Member(c.r.peer_id, MEMBER, 1, (), ("10.0.0.9:4650",), 0)
    check_child(winner, sign(redone, c.j))
    # The winner promotes m; our change lowered m's offer: m stays admin, with the lower offer.
    winner = sign(base.with_role(c.m.peer_id, ADMIN), c.a)
    mine = base.with_member(replace(m_entry, offer=0))
    redone = rebase(base, mine, winner.doc)
    assert redone is not None
    assert redone.member(c.m.peer_id) == Member(c.m.peer_id, ADMIN, 0, (), (), winner.doc.seq)
    check_child(winner, sign(redone, c.j))
    # Our own promotion of m, the winner having done the same: nothing left to do.
    assert rebase(base, base.with_role(c.m.peer_id, ADMIN), winner.doc) is None
    # Our promotion of m where the winner changed only something else: m is admin from our version.
    winner = sign(base.with_member(replace(m_entry, addresses=("10.0.0.7:4650",))), c.a)
    redone = rebase(base, base.with_role(c.m.peer_id, ADMIN), winner.doc)
    assert redone is not None
    assert redone.member(c.m.peer_id) == Member(c.m.peer_id, ADMIN, 1, (), ("10.0.0.7:4650",), winner.doc.seq + 1)
    check_child(winner, sign(redone, c.j))
    # Our demotion of r where the winner changed only r's offer: r is demoted, the offer stays the winner's.
    winner = sign(base.with_member(replace(r_entry, offer=7)), c.a)
    redone = rebase(base, base.with_role(c.r.peer_id, MEMBER), winner.doc)
    assert redone is not None and redone.member(c.r.peer_id) == Member(c.r.peer_id, MEMBER, 7)
    check_child(winner, sign(redone, c.j))
    # Our demotion of r where the winner demoted and promoted r again meanwhile: its role stands.
    again = sign(sign(base.with_role(c.r.peer_id, MEMBER), c.a).doc.with_role(c.r.peer_id, ADMIN), c.a)
    assert rebase(base, base.with_role(c.r.peer_id, MEMBER), again.doc) is None


def test_seniority_cannot_be_forged() -> None:
    c = Cloud()
    base = c.base.doc

    def with_since(doc: CloudDoc, p: PeerId, since: int, role: str = ADMIN) -> CloudDoc:
        return doc.evolve(replace(x, role=role, admin_since=since) if x.peer_id == p else x for x in doc.members)

    # r (admin since 3) signs a version that makes it the most senior admin: refused.
    with pytest.raises(RefusedError, match="seniority 1, not 3"):
        check_child(c.base, sign(with_since(base, c.r.peer_id, 1), c.r))
    # A new admin is admin from the version that promotes it, not earlier nor later.
    for forged in (1, 2, base.seq, base.seq + 2):
        with pytest.raises(RefusedError, match=f"seniority {forged}, not {base.seq + 1}"):
            check_child(c.base, sign(with_since(base, c.m.peer_id, forged), c.a))
    check_child(c.base, sign(with_since(base, c.m.peer_id, base.seq + 1), c.a))
    # A member has none (an in-memory document that says otherwise is refused too).
    with pytest.raises(RefusedError, match="seniority 3, not 0"):
        check_child(c.base, SignedDoc.create(with_since(base, c.m.peer_id, 3, MEMBER), c.a))
    # Demoted and promoted again: admin from the new promotion.
    demoted = sign(base.with_role(c.r.peer_id, MEMBER), c.a)
    again = sign(demoted.doc.with_role(c.r.peer_id, ADMIN), c.a)
    check_child(demoted, again)
    assert again.doc.member(c.r.peer_id).admin_since == again.doc.seq  # type: ignore[union-attr]
    # Version 1: its admins are admins since 1.
    genesis = CloudDoc.genesis("x", Member(c.a.peer_id, ADMIN, 1))
    forged_genesis = replace(genesis, members=(replace(genesis.members[0], admin_since=7),))
    with pytest.raises(FormatError, match="seniority other than 1"):
        SignedDoc.decode(SignedDoc.create(forged_genesis, c.a).encode())


def test_version_numbers_are_bounded(tmp_path: Path) -> None:
    c = Cloud()
    last = replace(c.base.doc, seq=MAX_SEQ - 1)
    assert CloudDoc.decode(last.encode()) == last
    with pytest.raises(FormatError, match="out of range"):
        CloudDoc.decode(replace(c.base.doc, seq=MAX_SEQ).encode())
    with pytest.raises(FormatError, match="out of range"):
        CloudDoc.decode(replace(c.base.doc, seq=2**63 + 5).encode())
    with pytest.raises(RefusedError, match="last version number"):
        last.evolve()
    want = m.CloudDocWant(1, c.base.doc.cloud_id, MAX_SEQ - 1)
    assert m.decode_header(m.encode_header(want)) == want
    for seq in (MAX_SEQ, 2**63 - 1):
        with pytest.raises(m.ProtocolError, match="cloud_want"):
            m.decode_header(m.encode_header(m.CloudDocWant(1, c.base.doc.cloud_id, seq)))
    # The largest version number a document may carry fits the index (a larger one overflowed it).
    index = Index(tmp_path / "index.sqlite")
    try:
        assert index.cloud_version(MAX_SEQ - 1) is None
        index.set_cloud_chain([(MAX_SEQ - 1, b"doc")])
        assert index.cloud_version(MAX_SEQ - 1) == b"doc"
    finally:
        index.close()
