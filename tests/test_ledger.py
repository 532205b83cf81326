from hypothesis import given
from hypothesis import strategies as st

from peercloud.cloud.classes import DEFAULT_CLASSES
from peercloud.cloud.ledger import (
    Health,
    Holder,
    ObjectStatus,
    bitmap_from_indexes,
    indexes_from_bitmap,
    object_status,
)


@given(total=st.integers(0, 300), data=st.data())
def test_bitmap_round_trip(total: int, data: st.DataObject) -> None:
    idx = sorted(data.draw(st.sets(st.integers(0, max(0, total - 1)), max_size=total)) if total else [])
    assert indexes_from_bitmap(bitmap_from_indexes(total, idx), total) == idx


def holder(name: str, blocks: list[int], online: bool = True, proved: list[int] | None = None) -> Holder:
    return Holder(name, tuple(blocks), online, False, 1.0, tuple(blocks if proved is None else proved))


def test_copies_and_distributed_copies() -> None:
    st_ = object_status(b"o", 4, "me", [0, 1, 2, 3], [holder("a", [0, 1, 2, 3]), holder("b", [0, 1], online=False)])
    assert [h.peer_id for h in st_.holders] == ["me", "a", "b"]
    assert st_.complete_copies == 2
    assert st_.local_percent == 100.0
    assert st_.distributed_copies == 2.5  # every block twice, half of them three times
    assert st_.availability(online_only=True) == [2, 2, 2, 2]
    partial = object_status(b"o", 4, "me", [1], [holder("a", [0, 1])])
    assert partial.local_percent == 25.0
    assert partial.distributed_copies == 0.5  # blocks 2 and 3 are nowhere
    assert partial.complete_copies == 0


def test_unproved_claims_add_nothing() -> None:
    st_ = object_status(b"o", 4, "me", [0, 1, 2, 3], [holder("liar", [0, 1, 2, 3], proved=[])])
    assert st_.complete_copies == 1 and st_.distributed_copies == 1.0
    assert st_.holders[1].percent(4) == 100.0  # the claim is still shown


def test_replica_health_follows_online_proved_copies() -> None:
    cls = DEFAULT_CLASSES["replica-3"]
    full = [0, 1, 2, 3]

    def health(*others: Holder) -> Health:
        return object_status(b"o", 4, "me", full, list(others), storage_class=cls).redundancy().health

    assert health(holder("a", full), holder("b", full)) is Health.HEALTHY
    assert health(holder("a", full), holder("b", full, online=False)) is Health.DEGRADED
    assert health(holder("a", full, online=False), holder("b", full, online=False)) is Health.AT_RISK
    lost = object_status(b"o", 4, "me", [], [holder("a", [0, 1])], storage_class=cls).redundancy()
    assert lost.health is Health.LOST and lost.available == 0


def test_ec_health_counts_distinct_shares_per_segment() -> None:
    cls = DEFAULT_CLASSES["ec-4+2"]
    segments, n = 2, 6

    def column(j: int) -> list[int]:
        return [s * n + j for s in range(segments)]

    peers = [holder(f"p{j}", column(j)) for j in range(n)]
    status = object_status(b"o", segments * n, "me", [], peers, k=4, n=6, storage_class=cls)
    assert status.redundancy().health is Health.HEALTHY and status.redundancy().available == 6
    two_down = [holder(h.peer_id, list(h.blocks), online=i >= 2) for i, h in enumerate(peers)]
    r = object_status(b"o", 12, "me", [], two_down, k=4, n=6, storage_class=cls).redundancy()
    assert r.health is Health.AT_RISK and r.available == 4
    three_down = [holder(h.peer_id, list(h.blocks), online=i >= 3) for i, h in enumerate(peers)]
    r = object_status(b"o", 12, "me", [], three_down, k=4, n=6, storage_class=cls).redundancy()
    assert r.health is Health.LOST
    crowded = object_status(b"o", 12, "me", list(range(12)), [], k=4, n=6, storage_class=cls).redundancy()
    assert crowded.crowded == 6 and "one peer" in crowded.note


def ec_status(layout: list[list[int]], segments: int = 2) -> ObjectStatus:
    """ec-4+2: each holder keeps the given share numbers of every segment."""
    holders = [holder(f"h{i}", [s * 6 + j for s in range(segments) for j in shares]) for i, shares in enumerate(layout)]
    return object_status(b"o", segments * 6, "me", [], holders, 4, 6, DEFAULT_CLASSES["ec-4+2"])


def test_health_counts_the_worst_losses_not_the_shares() -> None:
    # Six shares on six peers: any two may go (f = 2 = m): healthy.
    r = ec_status([[0], [1], [2], [3], [4], [5]]).redundancy()
    assert (r.health, r.can_lose, r.tolerance, r.available) == (Health.HEALTHY, 2, 2, 6)
    # Six shares on five peers, one holding two: losing it and one more leaves 3 < 4: degraded.
    r = ec_status([[0, 1], [2], [3], [4], [5]]).redundancy()
    assert (r.health, r.can_lose) == (Health.DEGRADED, 1)
    # The case: ec-4+2 on four members, one holding three shares. It used to say
    # "healthy 6/6", and stopping that one peer made it lost: at risk is the honest answer.
    r = ec_status([[0, 1, 2], [3], [4], [5]]).redundancy()
    assert (r.health, r.can_lose, r.available) == (Health.AT_RISK, 0, 6)
    r = ec_status([[0, 1, 2], [3]]).redundancy()
    assert (r.health, r.can_lose) == (Health.AT_RISK, 0)  # exactly k = 4 shares left
    assert ec_status([[0, 1, 2]]).redundancy().health is Health.LOST


def test_replica_health_counts_spread_values_as_one() -> None:
    cls = DEFAULT_CLASSES["replica-3"]
    three = [holder(n, [0, 1]) for n in ("a", "b", "c")]
    r = object_status(b"o", 2, "me", [], three, 1, 1, cls).redundancy()
    assert (r.health, r.can_lose, r.tolerance) == (Health.HEALTHY, 2, 2)
    two = object_status(b"o", 2, "me", [], three[:2], 1, 1, cls).redundancy()
    assert (two.health, two.can_lose) == (Health.DEGRADED, 1)
    one = object_status(b"o", 2, "me", [], three[:1], 1, 1, cls).redundancy()
    assert one.health is Health.AT_RISK
    # With --spread site, two copies at one site are one failure unit.
    spread = DEFAULT_CLASSES["replica-3"].__class__("sites", replicas=2, max_replicas=3, spread="site")
    at = [Holder(n, (0, 1), True, False, 1.0, (0, 1), spread=site) for n, site in (("a", "x"), ("b", "x"), ("c", "y"))]
    r = object_status(b"o", 2, "me", [], at, 1, 1, spread).redundancy()
    assert (r.health, r.can_lose) == (Health.HEALTHY, 1)
    same = object_status(b"o", 2, "me", [], at[:2], 1, 1, spread).redundancy()
    assert (same.health, same.can_lose) == (Health.AT_RISK, 0)  # both copies at site x
