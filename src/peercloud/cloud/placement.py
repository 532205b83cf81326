"""Placement: which members should hold which share columns of an object, and what to release.

Share j of every segment forms column j; a replicated object has the single column 0, held in
full by each replica holder, and an erasure-coded object has k+m columns that should each sit
on a different peer. Pure functions: the reconciler feeds in the ledger and the members as this
node sees them, and carries out the plan (targets *pull* their blocks from current holders).

Choice of new holders, in order: a value of the class's spread tag not yet used by a holder,
then the most free offered space, then the fewest placements already in flight.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import blake3

from peercloud.cloud.classes import StorageClass


@dataclass(frozen=True)
class Candidate:
    """An online member that could receive blocks."""

    peer: bytes
    free: int  # offered bytes minus what the ledger says it holds
    tags: tuple[tuple[str, str], ...] = ()
    load: int = 0  # placements asked of it and not yet done

    def tag(self, key: str) -> str | None:
        """One tag's value."""
        return dict(self.tags).get(key) if key else None


@dataclass(frozen=True)
class Plan:
    """What the coordinator should ask: columns to pull, columns to release, and why not more."""

    place: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    release: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    note: str = ""


def coordinator(object_id: bytes, peers: Iterable[bytes]) -> bytes | None:
    """The peer that repairs an object: closest (XOR) hashed peer key to the object ID.

    Every member computes the same answer from the same set of online members, so they do not
    all repair at once; when the coordinator goes offline the next closest takes over.
    """
    target = int.from_bytes(object_id[:32], "big")
    best: tuple[int, bytes] | None = None
    for peer in peers:
        distance = int.from_bytes(blake3.blake3(peer).digest(), "big") ^ target
        if best is None or distance < best[0]:
            best = (distance, peer)
    return best[1] if best else None


def plan(
    cls: StorageClass,
    n: int,
    column_bytes: int,
    holders: Mapping[bytes, set[int]],
    online: set[bytes],
    candidates: Iterable[Candidate],
    tags: Mapping[bytes, tuple[tuple[str, str], ...]] | None = None,
    pending: Mapping[bytes, set[int]] | None = None,
) -> Plan:
    """Plan one object.

    `holders`: peer → columns it proved in full, for members online or offline within the grace
    period; `pending`: placements asked and not yet confirmed (they count as coming).
    """
    pending = pending or {}
    tag_of = {p: dict(t).get(cls.spread) for p, t in (tags or {}).items()} if cls.spread else {}
    fits = [c for c in candidates if c.free >= column_bytes]
    for c in fits:
        tag_of.setdefault(c.peer, c.tag(cls.spread))
    if n == 1:
        return _plan_replicas(cls, column_bytes, holders, online, fits, tag_of, pending)
    return _plan_shares(cls, n, holders, online, fits, tag_of, pending)


def _best(options: list[Candidate], used_tags: set[str | None], tag_of: Mapping[bytes, str | None]) -> Candidate:
    return min(options, key=lambda c: (tag_of.get(c.peer) in used_tags, -c.free, c.load, c.peer))


def _plan_replicas(
    cls: StorageClass,
    column_bytes: int,
    holders: Mapping[bytes, set[int]],
    online: set[bytes],
    fits: list[Candidate],
    tag_of: Mapping[bytes, str | None],
    pending: Mapping[bytes, set[int]],
) -> Plan:
    have = sorted(p for p, cols in holders.items() if 0 in cols)
    coming = sorted(p for p, cols in pending.items() if 0 in cols and p not in have)
    count = len(have) + len(coming)
    place: dict[bytes, tuple[int, ...]] = {}
    release: dict[bytes, tuple[int, ...]] = {}
    used = {tag_of.get(p) for p in [*have, *coming]} if tag_of else set()
    options = [c for c in fits if c.peer not in have and c.peer not in coming]
    while count < cls.maximum and options:
        pick = _best(options, used, tag_of)
        spread_ok = not tag_of or tag_of.get(pick.peer) not in used
        if count >= cls.replicas and not spread_ok:
            break  # grow beyond the minimum only where the spread holds
        place[pick.peer] = (0,)
        used.add(tag_of.get(pick.peer))
        options.remove(pick)
        count += 1
    note = ""
    if count < cls.replicas:
        note = f"{cls.name} needs {cls.replicas} copies; only {count} members online have room"
    extra = len(have) - cls.maximum
    if extra > 0 and not coming:
        # Release where a spread value is doubled first, then from the fullest members.
        seen: dict[str | None, int] = {}
        for p in have:
            seen[tag_of.get(p)] = seen.get(tag_of.get(p), 0) + 1
        free = {c.peer: c.free for c in fits}
        ranked = sorted(
            (p for p in have if p in online),
            key=lambda p: (seen.get(tag_of.get(p), 0) <= 1 or not tag_of, free.get(p, 0), p),
        )
        for p in ranked[:extra]:
            release[p] = (0,)
    return Plan(place, release, note)


def _plan_shares(
    cls: StorageClass,
    n: int,
    holders: Mapping[bytes, set[int]],
    online: set[bytes],
    fits: list[Candidate],
    tag_of: Mapping[bytes, str | None],
    pending: Mapping[bytes, set[int]],
) -> Plan:
    keeper: dict[int, bytes] = {}
    columns_of: dict[bytes, int] = {}
    for j in range(n):
        held = sorted(p for p, cols in holders.items() if j in cols)
        held += sorted(p for p, cols in pending.items() if j in cols and p not in held)
        if held:
            chosen = min(held, key=lambda p: (columns_of.get(p, 0), len(holders.get(p, ())), p not in online))
            keeper[j] = chosen
            columns_of[chosen] = columns_of.get(chosen, 0) + 1
    place: dict[bytes, list[int]] = {}
    crowded_ok = False
    for j in range(n):
        current = keeper.get(j)
        if current is not None and columns_of[current] == 1:
            continue
        used_tags = {tag_of.get(p) for p in columns_of} if tag_of else set()
        fresh = [c for c in fits if c.peer not in columns_of]
        if fresh:
            pick = _best(fresh, used_tags, tag_of)
        elif current is None and fits:
            pick = min(fits, key=lambda c: (columns_of.get(c.peer, 0), -c.free, c.load, c.peer))
            crowded_ok = True
        else:
            continue
        if current is not None:
            columns_of[current] -= 1
        keeper[j] = pick.peer
        columns_of[pick.peer] = columns_of.get(pick.peer, 0) + 1
        place.setdefault(pick.peer, []).append(j)
    release: dict[bytes, list[int]] = {}
    for j, owner in keeper.items():
        if j not in holders.get(owner, set()) or owner not in online:
            continue  # the keeper has not proved it yet: keep the other copies meanwhile
        for p, cols in holders.items():
            if p != owner and j in cols and p in online:
                release.setdefault(p, []).append(j)
    missing = n - len(keeper)
    note = ""
    if missing or crowded_ok or any(v > 1 for v in columns_of.values()):
        note = f"{cls.name} wants its {n} shares on {n} different peers; fewer members online have room"
    return Plan({p: tuple(c) for p, c in place.items()}, {p: tuple(c) for p, c in release.items()}, note)
