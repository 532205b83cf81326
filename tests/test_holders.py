"""Which claims count in a member's view of an object: the rules placement and releases start from."""

from peercloud.cloud.holders import bits_of, columns_of, holder_view
from peercloud.store.holdings import Holding
from peercloud.store.index import CatalogEntry, InventoryItem

ME, OWNER, A, B, STRANGER = (bytes([i]) * 32 for i in range(1, 6))
MEMBERS = {ME, OWNER, A, B}
EC = CatalogEntry(b"\x09" * 32, "ec-2+1", 3, 2, 3, 1000, 0.0)  # one segment, three shares
ALL = b"\xe0"  # blocks 0, 1, 2


def row(peer: bytes, bitmap: bytes = ALL, confirmed: bytes = ALL, **kw: object) -> Holding:
    checked = kw.pop("checked_at", 1.0)
    return Holding(peer, bitmap, 0.0, confirmed, checked, None, **kw)  # type: ignore[arg-type]


def view(rows: list[Holding], local: InventoryItem | None = None, online: set[bytes] = MEMBERS, away: float = 0.0):  # type: ignore[no-untyped-def]
    return holder_view(ME, MEMBERS, online, lambda _: away, 60.0, EC, rows, local)


def test_bits_and_columns() -> None:
    assert bits_of(ALL, 3) == 0b111
    assert columns_of(0b111, 3, 3) == {0, 1, 2}
    assert columns_of(0b101, 3, 3) == {0, 2}
    assert columns_of(0b1111, 4, 1) == {0} and columns_of(0b1110, 4, 1) == set()


def test_an_unproved_provisional_claim_marks_its_holder_provisional() -> None:
    # The owner's fresh shares, not audited yet: the planner must still see them as provisional,
    # or it asks the owner to hold a share, which makes every share it has permanent (a
    # 4-of-6 object ended with two shares on the owner and none on a fifth member).
    v = view([row(OWNER, confirmed=b"\0", checked_at=None, provisional=True)])
    assert v.provisional == {OWNER: {0, 1, 2}}
    assert OWNER not in v.present and OWNER not in v.kept


def test_claims_not_audited_yet_are_present_but_never_keepers() -> None:
    v = view([row(A, confirmed=b"\0", checked_at=None), row(B)])
    assert v.present == {A: {0, 1, 2}, B: {0, 1, 2}}
    assert v.kept == {B: {0, 1, 2}}


def test_outsiders_failed_pinned_and_long_gone_holders_do_not_count() -> None:
    failed = Holding(B, ALL, 0.0, ALL, 1.0, 2.0)
    rows = [row(STRANGER), failed, row(A, pinned=True)]
    assert view(rows) == view([])
    away = view([row(A)], online={ME}, away=30.0)
    assert away.present == {A: {0, 1, 2}} and away.kept == {}  # within the grace: present, not kept
    assert view([row(A)], online={ME}, away=120.0).present == {}
    assert view([row(OWNER, provisional=True)], online={ME}).provisional == {}  # offline owner


def test_the_local_copy() -> None:
    mine = InventoryItem(EC.object_id, ALL, False, False)
    assert view([], mine).kept == {ME: {0, 1, 2}}
    assert view([], InventoryItem(EC.object_id, ALL, False, True)).provisional == {ME: {0, 1, 2}}
    assert view([], InventoryItem(EC.object_id, ALL, True, False)).kept == {}  # pinned by hand
