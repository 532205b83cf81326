"""Who holds which share columns of an object, as one member sees it: the input of every plan.

Pure (rows in, sets out) so the rules about which claims count — proved or not, online or away
within the grace, provisional or not, pinned by hand — are tested without daemons.
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass

from peercloud.store.index import CatalogEntry, Holding, InventoryItem


@dataclass
class View:
    """Peer → full columns: `kept` proved and online, `present` proved (or claimed by an online
    peer not audited yet) and online or away within the grace, `provisional` an owner's fresh
    EC shares (online, proved or not)."""

    kept: dict[bytes, set[int]]
    present: dict[bytes, set[int]]
    provisional: dict[bytes, set[int]]


def bits_of(bitmap: bytes, total: int) -> int:
    """The first `total` bits of a bitmap as an integer (bit i of the object = bit total-1-i)."""
    padded = bitmap[: (total + 7) // 8].ljust((total + 7) // 8, b"\0")
    return int.from_bytes(padded, "big") >> (-total % 8)


def columns_of(bits: int, total: int, n: int) -> set[int]:
    """Columns held in full by these block bits: one comparison for a replicated object."""
    if total <= 0:
        return set()
    if n == 1:
        return {0} if bits == (1 << total) - 1 else set()
    return full_columns([i for i in range(total) if bits >> (total - 1 - i) & 1], n, total // n)


def full_columns(indexes: list[int], n: int, segments: int) -> set[int]:
    """Columns (share numbers) of which every segment's block is among `indexes`."""
    counts = [0] * n
    for i in indexes:
        counts[i % n] += 1
    return {j for j in range(n) if counts[j] >= segments > 0}


def holder_view(
    me: bytes,
    members: Collection[bytes],
    online: Collection[bytes],
    away_for: Callable[[bytes], float],
    grace: float,
    entry: CatalogEntry,
    rows: list[Holding],
    local: InventoryItem | None,
) -> View:
    """Members' full columns of one object, from their claims (`rows`) and this node's holdings.

    Copies pinned by hand are extras on top of the class, and blocks a get left behind are a
    cache: placement neither counts nor releases them (the ledger's health does count them).
    """
    total, n = entry.total_blocks, entry.n
    view = View({}, {}, {})
    if local is not None and not local.pinned:
        cols = columns_of(bits_of(local.bitmap, total), total, n)
        if cols and local.provisional:
            view.provisional[me] = cols
        elif cols:
            view.kept[me] = view.present[me] = cols
    for h in rows:
        if h.peer_id not in members or h.failed_at is not None or h.pinned:
            continue  # outsiders, failed audits and copies pinned by hand are not the cloud's
        here = h.peer_id in online
        if not here and (h.provisional or away_for(h.peer_id) > grace):
            continue
        claimed = bits_of(h.bitmap, total)
        if h.provisional:
            # An owner's fresh shares, proved or not yet: never keepers, and their holder is no
            # placement target (a Place would make all its shares of the object permanent).
            if cols := columns_of(claimed, total, n):
                view.provisional[h.peer_id] = cols
            continue
        # Claimed and not audited yet (a node that just joined or restarted): counted as present
        # for planning, so no placement storm, but never as a keeper until proved.
        if here and h.checked_at is None and (cols := columns_of(claimed, total, n)):
            view.present[h.peer_id] = cols
        cols = columns_of(claimed & bits_of(h.confirmed, total), total, n)
        if not cols:
            continue
        view.present[h.peer_id] = cols
        if here:
            view.kept[h.peer_id] = cols
    return view
