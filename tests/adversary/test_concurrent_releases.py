"""Attack: concurrent releases. A member (joined by invite, so its requests are allowed) asks
every holder of an object to release its copy at the same moment.

Bound: with a `--replicas 2 --max 3` object on 3 proved holders, the object never has fewer
than 2 proved online copies and is never `lost`, right after the requests and for ~10 s after
as a non-holder's `status` sees it. At the minimum, a `--replicas 2` object on exactly 2
holders: both holders refuse (error code "refused") and 2 copies stay, while the object's
coordinator keeps running.
"""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peercloud.cloud.document import Invite
from peercloud.cloud.placement import peer_hash
from peercloud.identity import Identity
from peercloud.net.link import PeerError, PeerLink
from peercloud.wire import messages as m

from ..daemons import Daemon
from ..test_cloud import Raw, health, holders_with_copy, invite, make_cloud
from .hostile import Findings, poll

WATCH = 10.0


def far_identity(object_id: str, members: list[Daemon]) -> Identity:
    """A key farther from the object than every member's: never its coordinator (nor a backup)."""
    target = int.from_bytes(bytes.fromhex(object_id), "big")
    keys = [Identity.load(d.home / "node.key").peer_id for d in members]
    farthest = max(peer_hash(p.public_key) ^ target for p in keys)
    while True:
        identity = Identity.generate()
        if peer_hash(identity.peer_id.public_key) ^ target > farthest:
            return identity


def settle(peers: list[Daemon], object_id: str, count: int, timeout: float = 40.0) -> set[str]:
    """Wait until every member's ledger shows the same `count` holders with a proved online copy."""
    agreed: set[str] = set()

    def check() -> bool:
        views = [frozenset(holders_with_copy(d, object_id)) for d in peers]
        agreed.clear()
        agreed.update(views[0])
        return len(set(views)) == 1 and len(views[0]) == count

    poll(check, timeout, f"every member to see the same {count} proved copies")
    return agreed


def join(raw: Raw, admin: Daemon, members: list[Daemon]) -> PeerLink:
    """Join the cloud with an invite (offering 1 byte: nothing gets placed on us); wait for gossip."""
    link = raw.connect(admin)
    inv = Invite.parse(invite(admin))
    raw.call(link, lambda i: m.Join(i, inv.cloud_id, inv.secret, 1))
    me = str(raw.identity.peer_id)
    for d in members:
        poll(
            lambda d=d: me in [x["peer_id"] for x in d.json("cloud", "members")["members"]],
            30,
            f"{d.home.name} to know the new member",
            every=0.2,
        )
    return link


def release_all(raw: Raw, links: list[PeerLink], object_id: str) -> list[str]:
    """Release(object, (0,)) on every link at the same moment: "ok" or each error code."""

    async def one(link: PeerLink) -> str:
        try:
            await link.call(m.Release(link.next_id(), bytes.fromhex(object_id), (0,)), 20)
        except PeerError as e:
            return e.code or str(e)
        return "ok"

    async def every() -> list[str]:
        return list(await asyncio.gather(*(one(lk) for lk in links)))

    answers: list[str] = raw.run(every())
    return answers


def hang_up(raw: Raw, links: list[PeerLink]) -> None:
    """Close our links (then `raw.close()` stops its loop)."""

    async def close() -> None:
        for link in set(links):
            link.close("done")
        await asyncio.sleep(0.1)

    raw.run(close())


def watch(d: Daemon, object_id: str, seconds: float) -> tuple[int, list[str]]:
    """Poll a member's status: the fewest proved online copies seen, and every health seen."""
    fewest, seen = 10**9, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s: Any = health(d, object_id)
        total = s["total_blocks"]
        copies = sum(1 for h in s["holders"] if h["online"] and h["member"] and len(h["confirmed"]) == total)
        fewest = min(fewest, copies)
        seen.append(s["health"])
        time.sleep(0.2)
    return fewest, seen


def still_holding(holders: list[Daemon], object_id: str) -> int:
    """How many of the holders still keep every block (each asked about itself)."""
    return sum(1 for d in holders if health(d, object_id)["local_percent"] == 100.0)


def release_attack(
    f: Findings,
    daemons: Callable[..., Daemon],
    make_file: Callable[..., Path],
    cls: list[str],
    copies: int,
    wait: float,
) -> tuple[list[str], int, list[str]]:
    """A 4-member cloud, an object of class `cls` settled on `copies` holders, and a fresh member
    that sends Release to all of them at once: (answers, fewest copies an onlooker saw, healths seen)."""
    start = time.monotonic()
    peers = make_cloud(daemons, 4)
    f.figure("cloud_s", round(time.monotonic() - start, 1))
    admin = peers[0]
    admin.cli("class", "add", *cls, "--grace", "1s")
    oid = peers[1].json("add", str(make_file(2_000_000, name="g.bin")), "--class", cls[0])["object_id"]
    holding = settle(peers, oid, copies)  # every holder's own ledger counts the proved copies
    holders = [d for d in peers if d.peer_id in holding]
    onlooker = next(d for d in peers if d.peer_id not in holding)
    f.figure("placed_s", round(time.monotonic() - start, 1))
    raw = Raw(far_identity(oid, peers))
    links: list[PeerLink] = []
    try:
        first = join(raw, admin, peers)
        links.append(first)
        targets = [first if d is admin else raw.connect(d) for d in holders]
        links += targets
        f.figure("joined_s", round(time.monotonic() - start, 1))
        answers = release_all(raw, targets, oid)
        f.figure("answers", answers)
        fewest, seen = watch(onlooker, oid, wait)
        f.figure("fewest_copies_seen", fewest)
        f.figure("healths_seen", sorted(set(seen)))
        f.figure("holders_still_holding", still_holding(holders, oid))
    finally:
        hang_up(raw, links)
        raw.close()
    return answers, fewest, seen


def test_concurrent_releases_above_the_minimum(daemons: Callable[..., Daemon], make_file: Callable[..., Path]) -> None:
    f = Findings("concurrent-releases")
    answers, fewest, seen = release_attack(f, daemons, make_file, ["grow-3", "--replicas", "2", "--max", "3"], 3, WATCH)
    f.require(answers.count("ok") <= 1, f"{answers.count('ok')} of 3 holders released: only 1 may")
    f.require(fewest >= 2, f"the onlooker saw {fewest} proved online copies (bound: at least 2)")
    f.require("lost" not in seen, "the onlooker saw the object lost")
    f.check()


def test_concurrent_releases_at_the_minimum(daemons: Callable[..., Daemon], make_file: Callable[..., Path]) -> None:
    f = Findings("concurrent-releases-at-minimum")
    answers, fewest, seen = release_attack(f, daemons, make_file, ["pair", "--replicas", "2"], 2, WATCH / 2)
    f.require(answers == ["refused", "refused"], f"the two holders answered {answers}, not both refused")
    f.require(fewest >= 2, f"the onlooker saw {fewest} proved online copies (bound: 2)")
    f.require("lost" not in seen, "the onlooker saw the object lost")
    f.check()
