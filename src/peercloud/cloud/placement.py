"""Placement: which members should hold which share columns of an object, and what to release.

Share j of every segment forms column j; a replicated object has the single column 0, held in
full by each replica holder, and an erasure-coded object has k+m columns that should each sit
on a different peer. Pure functions: the reconciler feeds in the ledger and the members as this
node sees them, and carries out the plan (targets *pull* their blocks from current holders).

New holders are taken in `rank` order (most free offered space, then fewest placements in
flight), skipping members whose value of the class's spread tag a holder already has; only
when that leaves the class short of its minimum is a spread value doubled.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import blake3

from peercloud.cloud.classes import StorageClass
from peercloud.cloud.keepers import Tags, keepers, order_key, tag_value

__all__ = ["Candidate", "Plan", "Tags", "coordinator", "peer_hash", "plan", "rank", "rank_of", "tag_value"]


@dataclass(frozen=True)
class Candidate:
    """An online member that could receive blocks."""

    peer: bytes
    free: int  # offered bytes minus what the ledger says it holds
    tags: Tags = ()
    load: int = 0  # placements asked of it and not yet done


@dataclass(frozen=True)
class Plan:
    """What the coordinator should ask: columns to pull, columns to release, and why not more."""

    place: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    release: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    note: str = ""


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Order of preference for new holders; rank once per round, plan many objects with it."""
    return sorted(candidates, key=lambda c: (-c.free, c.load, c.peer))


def peer_hash(peer: bytes) -> int:
    """Where a peer sits in the object ID space (hash it once per round, not per object)."""
    return int.from_bytes(blake3.blake3(peer).digest(), "big")


def coordinator(object_id: bytes, peers: Iterable[bytes]) -> bytes | None:
    """The peer that repairs an object: closest (XOR) hashed peer key to the object ID.

    Every member computes the same answer from the same set of online members, so they do not
    all repair at once; when the coordinator goes offline the next closest takes over.
    """
    target = int.from_bytes(object_id[:32], "big")
    return min(peers, key=lambda p: peer_hash(p) ^ target, default=None)


def rank_of(object_id: bytes, mine: int, others: Iterable[int], limit: int) -> int:
    """How many of `others` (peer hashes) are closer to the object than `mine`, counting to `limit`.

    Rank 0 is the coordinator; the next ranks take over when it does not act (see reconciler).
    """
    target = int.from_bytes(object_id[:32], "big")
    distance, rank = mine ^ target, 0
    for h in others:
        if h ^ target < distance:
            rank += 1
            if rank >= limit:
                break
    return rank


def plan(
    object_id: bytes,
    cls: StorageClass,
    n: int,
    column_bytes: int,
    holders: Mapping[bytes, set[int]],
    online: set[bytes],
    ranked: list[Candidate],
    tags: Mapping[bytes, Tags] | None = None,
    pending: Mapping[bytes, set[int]] | None = None,
    provisional: Mapping[bytes, set[int]] | None = None,
    kept: Mapping[bytes, set[int]] | None = None,
) -> Plan:
    """Plan one object.

    `holders`: peer → columns it proved in full and keeps for the cloud, for members online or
    offline within the grace period; `ranked`: online members that may receive, from `rank`;
    `tags`: every member's tags; `pending`: placements asked and not yet proved (they count as
    coming); `provisional`: online peers' provisional columns (an owner's fresh EC shares);
    `kept`: online holders' *proved* columns (default: `holders` online), the only ones releases
    count on. Releases only ever name non-keepers (`keepers.py`), so holders agree to them.
    """
    picker = _Picker(cls.spread, column_bytes, ranked, tags or {})
    kept_online = {p: c for p, c in (kept if kept is not None else holders).items() if p in online}
    if n == 1:
        decision = _plan_replicas(object_id, cls, holders, kept_online, picker, pending or {})
    else:
        decision = _plan_shares(object_id, cls, n, holders, kept_online, picker, pending or {}, provisional or {})
    for p, cols in (provisional or {}).items():
        covered = [j for j in sorted(cols) if any(j in c for q, c in kept_online.items() if q != p)]
        if covered and p in online:
            decision.release[p] = tuple(sorted({*decision.release.get(p, ()), *covered}))
    return decision


class _Picker:
    """Takes new holders in rank order, keeping the spread tag's values apart where it can."""

    def __init__(self, spread: str, column_bytes: int, ranked: list[Candidate], tags: Mapping[bytes, Tags]) -> None:
        self.spread = spread
        self.column_bytes = column_bytes
        self.ranked = ranked
        self.tags = tags

    def tag(self, peer: bytes) -> str | None:
        return tag_value(self.tags.get(peer, ()), self.spread) if self.spread else None

    def pick(
        self,
        taken: set[bytes],
        used: set[str | None],
        allow_same_tag: bool,
        ahead: Callable[[bytes], bool] | None = None,
    ) -> Candidate | None:
        fallback = None
        for c in self.ranked:
            if c.free < self.column_bytes or c.peer in taken or (ahead is not None and not ahead(c.peer)):
                continue
            if not self.spread or tag_value(c.tags, self.spread) not in used:
                return c
            if allow_same_tag and fallback is None:
                fallback = c
        return fallback


def _plan_replicas(
    object_id: bytes,
    cls: StorageClass,
    holders: Mapping[bytes, set[int]],
    kept: Mapping[bytes, set[int]],
    picker: _Picker,
    pending: Mapping[bytes, set[int]],
) -> Plan:
    have = sorted(p for p, cols in holders.items() if 0 in cols)
    coming = [p for p, cols in pending.items() if 0 in cols and p not in holders]
    taken = {*have, *coming}
    used = {picker.tag(p) for p in taken} if cls.spread else set()
    place: dict[bytes, tuple[int, ...]] = {}
    while len(taken) < cls.maximum:
        # Beyond the minimum, grow only where the spread holds.
        pick = picker.pick(taken, used, allow_same_tag=len(taken) < cls.replicas)
        if pick is None:
            break
        place[pick.peer] = (0,)
        taken.add(pick.peer)
        used.add(picker.tag(pick.peer))
    note = ""
    if len(taken) < cls.replicas:
        note = f"{cls.name} needs {cls.replicas} copies; only {len(taken)} members online have room"
    release: dict[bytes, tuple[int, ...]] = {}
    here = sorted(p for p, cols in kept.items() if 0 in cols)  # proved and online: never count on one away
    if len(here) > cls.maximum and not coming:
        keep = set(keepers(object_id, 1, cls.maximum, {p: {0} for p in here}, picker.tags, cls.spread)[0])
        release = {p: (0,) for p in here if p not in keep}
    return Plan(place, release, note)


def _plan_shares(
    object_id: bytes,
    cls: StorageClass,
    n: int,
    holders: Mapping[bytes, set[int]],
    kept_online: Mapping[bytes, set[int]],
    picker: _Picker,
    pending: Mapping[bytes, set[int]],
    provisional: Mapping[bytes, set[int]],
) -> Plan:
    # Each column's keeper is its first holder (or placement on the way) in the keeper order.
    def rank_in(j: int) -> Callable[[bytes], bytes]:
        return lambda p: order_key(object_id, j, p)

    keeper: dict[int, bytes] = {}
    for j in range(n):
        present = {p for p, cols in holders.items() if j in cols} | {p for p, cols in pending.items() if j in cols}
        if present:
            keeper[j] = min(present, key=rank_in(j))
    columns_of: dict[bytes, int] = {}
    for p in keeper.values():
        columns_of[p] = columns_of.get(p, 0) + 1
    # Columns without a keeper, or whose keeper keeps others too, go to a peer keeping none yet
    # that ranks ahead of the current keeper (so the keeper order moves the column there).
    place: dict[bytes, list[int]] = {}
    for j in range(n):
        current = keeper.get(j)
        if current is not None and columns_of[current] == 1:
            continue
        # Peers keeping provisional shares are no targets until those are gone (no mixed holds),
        # but for the columns only they have (adopted below).
        busy = {p for p, c in columns_of.items() if c} | {p for p, cols in holders.items() if j in cols}
        busy |= set(provisional)
        used = {picker.tag(p) for p in columns_of if columns_of[p]} if picker.spread else set()
        ahead = None
        if current is not None:
            limit = order_key(object_id, j, current)
            ahead = lambda p, limit=limit, j=j: order_key(object_id, j, p) < limit  # noqa: E731
        pick = picker.pick(busy, used, allow_same_tag=True, ahead=ahead)
        if pick is None and current is None:
            if any(j in cols for cols in provisional.values()):
                continue  # the owner's copy stays: it adopts the column below once its others are spread
            # The cloud is too small: double up on the member with the fewest columns.
            roomy = [c for c in picker.ranked if c.free >= picker.column_bytes and c.peer not in provisional]
            pick = min(roomy, key=lambda c: columns_of.get(c.peer, 0), default=None)
        if pick is None:
            continue
        if current is not None:
            columns_of[current] -= 1
        keeper[j] = pick.peer
        columns_of[pick.peer] = columns_of.get(pick.peer, 0) + 1
        place.setdefault(pick.peer, []).append(j)
    # A provisional holder whose columns no member can take keeps them for real: asked to hold
    # them, it has every block already. Only once all its other columns were spread (and released),
    # so its hold is never part provisional; doubling up elsewhere would leave the owner with
    # nothing while another member holds two columns it cannot hand on to the owner later.
    for p, cols in sorted(provisional.items()):
        if cols and not any(j in keeper for j in cols):
            for j in sorted(cols):
                keeper[j] = p
                columns_of[p] = columns_of.get(p, 0) + 1
            place.setdefault(p, []).extend(sorted(cols))
    # Holders other than a column's online keeper release it: exactly what they agree to.
    release: dict[bytes, list[int]] = {}
    for j, chosen in keepers(object_id, n, 1, kept_online).items():
        for p, cols in kept_online.items():
            if j in cols and p not in chosen:
                release.setdefault(p, []).append(j)
    note = ""
    if len(keeper) < n or any(v > 1 for v in columns_of.values()):
        note = f"{cls.name} wants its {n} shares on {n} different peers; fewer members online have room"
    return Plan({p: tuple(c) for p, c in place.items()}, {p: tuple(c) for p, c in release.items()}, note)
