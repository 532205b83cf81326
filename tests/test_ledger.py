from hypothesis import given
from hypothesis import strategies as st

from peercloud.cloud.ledger import bitmap_from_indexes, indexes_from_bitmap, object_status


@given(total=st.integers(0, 300), data=st.data())
def test_bitmap_round_trip(total: int, data: st.DataObject) -> None:
    idx = sorted(data.draw(st.sets(st.integers(0, max(0, total - 1)), max_size=total)) if total else [])
    assert indexes_from_bitmap(bitmap_from_indexes(total, idx), total) == idx


def test_copies_and_distributed_copies() -> None:
    bm = bitmap_from_indexes
    st_ = object_status(
        b"o",
        4,
        "me",
        [0, 1, 2, 3],
        [("a", bm(4, [0, 1, 2, 3]), True, 1.0), ("b", bm(4, [0, 1]), False, 2.0), ("c", b"", True, 3.0)],
    )
    assert [h.peer_id for h in st_.holders] == ["me", "a", "b"]  # c holds nothing: not a holder
    assert st_.complete_copies == 2
    assert st_.local_percent == 100.0
    assert st_.distributed_copies == 2.5  # every block twice, half of them three times
    assert st_.availability(online_only=True) == [2, 2, 2, 2]
    partial = object_status(b"o", 4, "me", [1], [("a", bm(4, [0, 1]), True, 1.0)])
    assert partial.local_percent == 25.0
    assert partial.distributed_copies == 0.5  # blocks 2 and 3 are nowhere
    assert partial.complete_copies == 0
