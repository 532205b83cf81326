"""Placement and ledger at scale, in-process: 100 members, 100,000 objects.

Builds a synthetic cloud (members with site tags and offers; objects in replica-3 and ec-4+2,
each with a random set of holders, some of them offline or missing shares), then times:

1. placement: `placement.plan` for every object, as a coordinator would run it;
2. health: `ObjectStatus.redundancy()` for every object, as `peercloud status` summarises;

and prints each against the 10 s target, with the memory the process needed (peak RSS).
The ledger is built from the same pure functions the daemon uses; no disk or network.

    .venv/bin/python bench/placement_scale.py [--members 100] [--objects 100000] [--segments 8]
"""

import argparse
import random
import resource
import statistics
import time

from peercloud.cloud.classes import DEFAULT_CLASSES
from peercloud.cloud.ledger import Holder, object_status
from peercloud.cloud.placement import Candidate, plan, rank

TARGET = 10.0


def build(members: int, objects: int, segments: int, seed: int = 7) -> tuple[list[Candidate], list[tuple]]:
    rng = random.Random(seed)
    peers = [rng.randbytes(32) for _ in range(members)]
    cands = [
        Candidate(p, rng.randrange(10, 1000) * 2**30, (("site", f"s{i % 7}"),), rng.randrange(4))
        for i, p in enumerate(peers)
    ]
    world = []
    for i in range(objects):
        cls = DEFAULT_CLASSES["replica-3" if i % 2 else "ec-4+2"]
        n = cls.coding.n
        picks = rng.sample(peers, min(len(peers), 3 if n == 1 else n))
        holders: dict[bytes, set[int]] = {}
        for j, p in enumerate(picks):
            if rng.random() < 0.9:  # some placements are missing: the plan has work to do
                holders[p] = {0} if n == 1 else {j}
        online = {p for p in picks if rng.random() < 0.95}
        world.append((rng.randbytes(32), cls, n, holders, online))
    return cands, world


def time_plans(cands: list[Candidate], world: list[tuple], segments: int) -> float:
    tags = {c.peer: c.tags for c in cands}
    start = time.perf_counter()
    ranked = rank(cands)  # once per round, as the reconciler does
    for oid, cls, n, holders, online in world:
        plan(oid, cls, n, segments * 2**20, holders, online, ranked, tags)
    return time.perf_counter() - start


def time_health(world: list[tuple], segments: int) -> tuple[float, dict[str, int]]:
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for oid, cls, n, holders, online in world:
        k = 1 if n == 1 else cls.k
        total = segments * n
        peers = [
            Holder(p.hex(), blocks, p in online, False, 0.0, blocks)
            for p, cols in holders.items()
            for blocks in [tuple(s * n + j for s in range(segments) for j in cols)]
        ]
        health = object_status(oid, total, "me", (), peers, k, n, cls).redundancy().health.value
        counts[health] = counts.get(health, 0) + 1
    return time.perf_counter() - start, counts


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    before = peak_rss_mib()
    cands, world = build(args.members, args.objects, args.segments)
    built = peak_rss_mib()
    plans, healths = [], []
    counts: dict[str, int] = {}
    for _ in range(args.runs):
        plans.append(time_plans(cands, world, args.segments))
        seconds, counts = time_health(world, args.segments)
        healths.append(seconds)
    peak = peak_rss_mib()
    p, h = statistics.median(plans), statistics.median(healths)
    print(f"{args.members} members, {args.objects:,} objects ({args.segments} segments each), median of {args.runs}")
    print(f"placement for all: {p:6.2f} s  ({p / TARGET:.2f} of the {TARGET:.0f} s target)")
    print(f"health for all:    {h:6.2f} s  ({h / TARGET:.2f} of the {TARGET:.0f} s target)  {counts}")
    print(f"memory (peak RSS): {before:.0f} MiB at start, {built:.0f} MiB with the ledger built, {peak:.0f} MiB at end")


if __name__ == "__main__":
    main()
