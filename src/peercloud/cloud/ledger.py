"""Who holds what: per-object holder maps and the redundancy figures derived from them.

Pure functions over bitmaps (bit i = the object's i-th block in manifest order, segment-major),
so the same code serves the CLI, the API, the reconciler and tests. A holder's *claimed* blocks
are what it announced (HAVE); its *confirmed* blocks are those it proved in an audit (or, for
this node, that its own store verified). Every figure counts confirmed blocks only, so a peer
that lies about what it holds adds nothing.

"Distributed copies" follows BitTorrent: the number of complete copies the holders make
together, min over blocks of how many holders have the block, plus the fraction of blocks that
have more than that minimum.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from peercloud.cloud.classes import StorageClass


def bitmap_from_indexes(total: int, indexes: Iterable[int]) -> bytes:
    """Pack block positions into a bitmap (bit 7 of byte 0 is block 0)."""
    out = bytearray((total + 7) // 8)
    for i in indexes:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def bit_count(bitmap: bytes) -> int:
    """How many blocks a bitmap names."""
    return int.from_bytes(bitmap, "big").bit_count()


def indexes_from_bitmap(bitmap: bytes, total: int) -> list[int]:
    """Unpack a bitmap; bits past `total` (or past the bitmap) are ignored."""
    value = int.from_bytes(bitmap, "big")
    width = len(bitmap) * 8
    out = []
    while value:
        low = value & -value
        i = width - low.bit_length()
        if i < total:
            out.append(i)
        value ^= low
    out.reverse()
    return out


class Health(Enum):
    """An object's state against its class, from the blocks online holders proved."""

    HEALTHY = "healthy"  # every segment at the class target
    DEGRADED = "degraded"  # readable with margin, below target: repair is due (or waits out a grace)
    AT_RISK = "at risk"  # readable, but one more loss makes some segment unreadable
    LOST = "lost"  # some segment cannot be read from the holders online now


@dataclass(frozen=True)
class Holder:
    """One holder of (part of) an object."""

    peer_id: str
    blocks: tuple[int, ...]  # claimed
    online: bool
    is_self: bool
    updated_at: float | None
    confirmed: tuple[int, ...] = ()
    member: bool = True  # in this node's cloud (outsiders' copies are outside its control)
    failed_audit: bool = False
    pinned: bool = False  # an extra copy its holder chose to keep
    checked_at: float | None = None  # when this node last audited the claim
    spread: str | None = None  # its value of the class's spread tag (holders sharing one fail together)

    def percent(self, total: int) -> float:
        """Share of the object's blocks this holder claims."""
        return 100.0 * len(self.blocks) / total if total else 100.0


@dataclass(frozen=True)
class Redundancy:
    """The object measured against its class."""

    health: Health
    available: int  # min over segments: copies (replicas) or distinct shares (EC) online now
    target: int  # copies or shares per segment the class asks for
    needed: int  # to read a segment: 1 copy, or k shares
    crowded: int  # most shares of one segment on a single peer (EC wants 1)
    note: str = ""
    can_lose: int = 0  # f: holders (spread-tag values) that may be lost, worst case, every segment readable
    tolerance: int = 0  # the f the class promises: m for EC, minimum - 1 for replicas


@dataclass(frozen=True)
class ObjectStatus:
    """The ledger's picture of one object."""

    object_id: bytes
    total_blocks: int
    holders: tuple[Holder, ...]
    k: int = 1
    n: int = 1
    storage_class: StorageClass | None = field(default=None)
    size: int = 0

    @property
    def local_percent(self) -> float:
        """How much of the object this node holds."""
        mine = [h for h in self.holders if h.is_self]
        return mine[0].percent(self.total_blocks) if mine else 0.0

    @property
    def complete_copies(self) -> int:
        """Holders that proved every block."""
        return sum(1 for h in self.holders if len(h.confirmed) == self.total_blocks)

    def availability(self, online_only: bool = False) -> list[int]:
        """How many holders proved each block."""
        counts = [0] * self.total_blocks
        for h in self.holders:
            if online_only and not h.online:
                continue
            for i in h.confirmed:
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

    def redundancy(self) -> Redundancy:
        """Health against the class, counting members' proved blocks on peers online now.

        f (`can_lose`) is how many holders — or, for a class that spreads over a tag, tag values —
        can be lost, the worst ones first, with every segment still readable: healthy when f
        reaches the class's tolerance (m for EC, minimum - 1 for replicas), degraded when
        1 ≤ f below it, at risk when f = 0, lost when some segment is unreadable now.
        """
        cls = self.storage_class
        counting = [h for h in self.holders if h.online and h.member]
        segments = self.total_blocks // self.n if self.n else 0
        spread = bool(cls and cls.spread)
        units: dict[str, list[set[int]]] = {}  # failure unit → per segment, the shares it holds
        for h in counting:
            key = f"tag:{h.spread}" if spread and h.spread is not None else f"peer:{h.peer_id}"
            per = units.setdefault(key, [set() for _ in range(segments)])
            for i in h.confirmed:
                per[i // self.n].add(i % self.n)
        needed = 1 if self.n == 1 else self.k
        crowded, available, can_lose = 0, None, None
        cache: dict[tuple[frozenset[int], ...], int] = {}
        for s in range(segments):
            held = tuple(frozenset(u[s]) for u in units.values() if u[s])
            distinct = len(frozenset().union(*held)) if self.n > 1 else len(held)
            available = distinct if available is None else min(available, distinct)
            if held not in cache:
                cache[held] = _tolerates(list(held), needed, replicas=self.n == 1)
            can_lose = cache[held] if can_lose is None else min(can_lose, cache[held])
        for h in counting:
            per_segment = [0] * max(segments, 1)
            for i in h.confirmed:
                per_segment[i // self.n] += 1
            crowded = max(crowded, *per_segment)
        available, can_lose = available or 0, can_lose or 0
        if self.n == 1:
            target = cls.replicas if cls and cls.replicas else 1
            tolerance = target - 1
        else:
            target, tolerance = self.n, self.n - self.k
        if available < needed:
            health, can_lose = Health.LOST, -1
        elif can_lose >= tolerance:
            health = Health.HEALTHY
        elif can_lose == 0:
            health = Health.AT_RISK
        else:
            health = Health.DEGRADED
        note = ""
        if self.n > 1 and crowded > 1:
            note = f"up to {crowded} shares of a segment sit on one peer: losing it costs {crowded} shares"
        return Redundancy(health, available, target, needed, max(crowded, 1), note, can_lose, tolerance)


def _tolerates(held: list[frozenset[int]], needed: int, replicas: bool) -> int:
    """How many of these failure units can go, worst first, leaving `needed` copies or shares."""
    if replicas:
        return max(-1, len(held) - needed)
    units, lost = list(held), 0
    while units:
        # Take away the unit whose loss leaves the fewest distinct shares (greedy worst case).
        lefts = [len(frozenset().union(*(u for j, u in enumerate(units) if j != i))) for i in range(len(units))]
        worst = min(range(len(units)), key=lefts.__getitem__)
        if lefts[worst] < needed:
            break
        units.pop(worst)
        lost += 1
    return lost


def object_status(
    object_id: bytes,
    total_blocks: int,
    self_id: str,
    local: Iterable[int],
    peers: Iterable[Holder],
    k: int = 1,
    n: int = 1,
    storage_class: StorageClass | None = None,
    size: int = 0,
    pinned_here: bool = False,
    self_spread: str | None = None,
) -> ObjectStatus:
    """Build the status from our own blocks (proved by our store) and peers' holdings."""
    mine = tuple(local)
    me = Holder(self_id, mine, True, True, None, mine, pinned=pinned_here, spread=self_spread)
    holders = [me] if mine or total_blocks == 0 else []
    holders += [h for h in peers if h.blocks]
    return ObjectStatus(object_id, total_blocks, tuple(holders), k, n, storage_class, size)
