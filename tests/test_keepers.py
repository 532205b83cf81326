"""The keeper rule: however many holders are asked to release at once, each deciding from its
own (partial) view, the class keeps its copies. Pure, no sockets."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.cloud.keepers import keepers, releasable, replica_order


def peers(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


@settings(max_examples=300, deadline=None)
@given(
    n_holders=st.integers(1, 8),
    maximum=st.integers(1, 5),
    seed=st.randoms(use_true_random=False),
    spread=st.booleans(),
)
def test_concurrent_releases_never_go_below_max_or_the_holders(
    n_holders: int, maximum: int, seed: object, spread: bool
) -> None:
    rnd = seed  # hypothesis' Random
    oid = os.urandom(32)
    holders = peers(n_holders)
    tags = {p: (("site", f"s{rnd.randrange(3)}"),) for p in holders}  # type: ignore[attr-defined]
    released = set()
    for me in holders:
        # Each holder sees itself and any subset of the others (proofs and links differ per node).
        view = {p: {0} for p in holders if p == me or rnd.random() < 0.7}  # type: ignore[attr-defined]
        if releasable(me, oid, 1, maximum, view, (), [0], tags, "site" if spread else ""):
            released.add(me)
    assert n_holders - len(released) >= min(maximum, n_holders)


@settings(max_examples=300, deadline=None)
@given(n_holders=st.integers(1, 6), n=st.integers(2, 6), seed=st.randoms(use_true_random=False))
def test_every_ec_column_keeps_a_holder(n_holders: int, n: int, seed: object) -> None:
    rnd = seed
    oid = os.urandom(32)
    holders = peers(n_holders)
    holds = {p: {j for j in range(n) if rnd.random() < 0.6} for p in holders}  # type: ignore[attr-defined]
    left = {p: set(cols) for p, cols in holds.items()}
    for me in holders:
        view = {p: holds[p] for p in holders if p == me or rnd.random() < 0.7}  # type: ignore[attr-defined]
        left[me] -= releasable(me, oid, n, 1, view, (), range(n))
    for j in range(n):
        if any(j in cols for cols in holds.values()):
            assert any(j in cols for cols in left.values()), f"column {j} lost"


def test_provisional_copies_go_only_once_a_keeper_holds_the_column() -> None:
    oid = os.urandom(32)
    owner, other = peers(2)
    assert releasable(owner, oid, 3, 1, {}, {0, 1, 2}, [0, 1, 2]) == set()
    assert releasable(owner, oid, 3, 1, {other: {1}}, {0, 1, 2}, [0, 1, 2]) == {1}


def test_the_order_is_the_same_on_every_member_and_prefers_spread() -> None:
    oid = os.urandom(32)
    a, b, c = peers(3)
    tags = {a: (("site", "x"),), b: (("site", "x"),), c: (("site", "y"),)}
    assert replica_order(oid, [a, b, c], tags, "site") == replica_order(oid, [c, b, a], tags, "site")
    first_two = replica_order(oid, [a, b, c], tags, "site")[:2]
    assert c in first_two  # one holder per site before a second on a site
    assert keepers(oid, 1, 2, {a: {0}, b: {0}, c: {0}}, tags, "site")[0] == first_two
