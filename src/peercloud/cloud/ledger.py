"""Who holds what: per-object holder maps and the redundancy figures derived from them.

Pure functions over bitmaps (bit i = the object's i-th block in manifest order), so the same
code serves the CLI, the API and tests. "Distributed copies" follows BitTorrent: the number of
complete copies the holders make together, min over blocks of how many holders have the block,
plus the fraction of blocks that have more than that minimum.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def bitmap_from_indexes(total: int, indexes: Iterable[int]) -> bytes:
    """Pack block positions into a bitmap (bit 7 of byte 0 is block 0)."""
    out = bytearray((total + 7) // 8)
    for i in indexes:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def indexes_from_bitmap(bitmap: bytes, total: int) -> list[int]:
    """Unpack a bitmap; bits past `total` (or past the bitmap) are ignored."""
    return [i for i in range(min(total, len(bitmap) * 8)) if bitmap[i // 8] & (0x80 >> (i % 8))]


@dataclass(frozen=True)
class Holder:
    """One holder of (part of) an object."""

    peer_id: str
    blocks: tuple[int, ...]
    online: bool
    is_self: bool
    updated_at: float | None

    def percent(self, total: int) -> float:
        """Share of the object's blocks this holder has."""
        return 100.0 * len(self.blocks) / total if total else 100.0


@dataclass(frozen=True)
class ObjectStatus:
    """The ledger's picture of one object."""

    object_id: bytes
    total_blocks: int
    holders: tuple[Holder, ...]

    @property
    def local_percent(self) -> float:
        """How much of the object this node holds."""
        mine = [h for h in self.holders if h.is_self]
        return mine[0].percent(self.total_blocks) if mine else 0.0

    @property
    def complete_copies(self) -> int:
        """Holders that have every block."""
        return sum(1 for h in self.holders if len(h.blocks) == self.total_blocks)

    def availability(self, online_only: bool = False) -> list[int]:
        """How many holders have each block."""
        counts = [0] * self.total_blocks
        for h in self.holders:
            if online_only and not h.online:
                continue
            for i in h.blocks:
                counts[i] += 1
        return counts

    @property
    def distributed_copies(self) -> float:
        """BitTorrent's figure: full copies the holders make together, with a fractional part."""
        counts = self.availability()
        if not counts:
            return float(len(self.holders))
        low = min(counts)
        return low + sum(1 for c in counts if c > low) / len(counts)


def object_status(
    object_id: bytes,
    total_blocks: int,
    self_id: str,
    local: Sequence[int],
    peers: Iterable[tuple[str, bytes, bool, float]],
) -> ObjectStatus:
    """Build the status from our own blocks and peers' (id, bitmap, online, updated_at)."""
    holders = [Holder(self_id, tuple(local), True, True, None)] if local or total_blocks == 0 else []
    for peer_id, bitmap, online, updated in peers:
        blocks = indexes_from_bitmap(bitmap, total_blocks)
        if blocks:
            holders.append(Holder(peer_id, tuple(blocks), online, False, updated))
    return ObjectStatus(object_id, total_blocks, tuple(holders))
