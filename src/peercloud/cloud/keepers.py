"""Keepers: which holders must keep an object's share columns, derived alike by every member.

A holder asked to release (by the coordinator, or by any member, hostile or not) never sees the
releases sent to the other holders, so "do the others still meet the class without me?" fails
when all of them are asked at once. Instead every member ranks the holders of a column in one
strict order derived from the object ID and the peer keys alone (BLAKE3 of both), and a holder
releases a column only when it is not one of that column's *keepers*: the first `max` proved,
online holders in that order for a replicated object (holders on a spread-tag value not yet
taken first), the first one for each share column of an erasure-coded object.

Why this is safe whatever the timing: a node's view of who holds what is a subset of the truth
(a claim counts only once proved), and dropping holders from a view never moves another one
ahead of a given holder. So the true first `max` holders of a column each see fewer than `max`
holders ahead of themselves, and none of them releases: the column keeps min(max, holders)
copies however many releases arrive at once.

*Provisional* copies — the shares an owner keeps of an erasure-coded object it just added,
until placement has spread them — are never keepers: they go once a column has a real keeper,
so the owner's copy never crowds the shares onto one peer.
"""

from collections.abc import Iterable, Mapping

import blake3

Tags = tuple[tuple[str, str], ...]


def tag_value(tags: Tags, key: str) -> str | None:
    """One tag's value (such as the member's `site`), or None."""
    for k, v in tags:
        if k == key:
            return v
    return None


def order_key(object_id: bytes, column: int, peer: bytes) -> bytes:
    """Where a peer ranks among a column's holders: the same on every member."""
    return blake3.blake3(object_id + bytes([column]) + peer).digest()


def replica_order(object_id: bytes, holders: Iterable[bytes], tags: Mapping[bytes, Tags], spread: str) -> list[bytes]:
    """Holders of a replicated object in keeper order: one per spread value first, then the rest."""
    ordered = sorted(holders, key=lambda p: order_key(object_id, 0, p))
    if not spread:
        return ordered
    first: list[bytes] = []
    rest: list[bytes] = []
    seen: set[str | None] = set()
    for p in ordered:
        value = tag_value(tags.get(p, ()), spread)
        (rest if value in seen else first).append(p)
        seen.add(value)
    return first + rest


def keepers(
    object_id: bytes,
    n: int,
    maximum: int,
    kept: Mapping[bytes, Iterable[int]],
    tags: Mapping[bytes, Tags] | None = None,
    spread: str = "",
) -> dict[int, list[bytes]]:
    """Per column, the holders that must keep it; `kept`: peer → columns it holds in full (proved, online)."""
    by_column: dict[int, list[bytes]] = {}
    for peer, cols in kept.items():
        for j in cols:
            by_column.setdefault(j, []).append(peer)
    out = {}
    for j, holders in by_column.items():
        if n == 1:
            out[j] = replica_order(object_id, holders, tags or {}, spread)[:maximum]
        else:
            out[j] = [min(holders, key=lambda p: order_key(object_id, j, p))]
    return out


def releasable(
    me: bytes,
    object_id: bytes,
    n: int,
    maximum: int,
    kept: Mapping[bytes, Iterable[int]],
    provisional: Iterable[int],
    asked: Iterable[int],
    tags: Mapping[bytes, Tags] | None = None,
    spread: str = "",
) -> set[int]:
    """The asked columns this holder may drop: those it is no keeper of.

    `kept` includes this node's own full, non-provisional columns; `provisional` are this
    node's provisional columns, dropped only once another holder keeps them. A column this
    node holds only in part is no copy anyone counts on, so it may always go.
    """
    chosen = keepers(object_id, n, maximum, kept, tags, spread)
    mine = set(kept.get(me, ()))
    out = set()
    for j in asked:
        if j in mine:
            if me not in chosen.get(j, [me]):
                out.add(j)
        elif j in set(provisional):
            if chosen.get(j):
                out.add(j)
        else:
            out.add(j)
    return out
