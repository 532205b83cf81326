"""The peers a node keeps connections to: dialing with backoff, one link per peer, HAVE gossip."""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from peercloud.connect import relay_dial  # noqa: F401 - registers the relayed dialer
from peercloud.connect.book import AddressBook
from peercloud.connect.dial import DialContext, dial_any
from peercloud.identity import Identity, PeerId
from peercloud.net.link import Address, PeerError, PeerLink, RequestHandler
from peercloud.store.index import Claim, Index
from peercloud.swarm.intake import HaveIntake
from peercloud.swarm.inventory import Inventory, InventorySender
from peercloud.wire import batches
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
BAN_SECONDS = 600.0
KEEPALIVE = 15.0  # ping interval and timeout
KEEPALIVE_MISSES = 2  # pings in a row answered by nothing at all: the link is closed (and re-dialed)
STABLE_LINK = 30.0  # a link that lived this long resets the dial backoff
REACH_TIMEOUT = 30.0  # seconds `reach` keeps trying
RETIRE = 30.0  # seconds a replaced relayed link may take to finish what is in flight
MAX_LINKS = 512  # authenticated links kept at once; members and configured peers always get one


@dataclass
class PeerInfo:
    """What the node knows about one peer right now."""

    peer_id: PeerId
    address: str | None
    connected: bool = False
    rtt: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    path: str | None = None  # lan, direct, mapped, punched, relayed; None when not connected
    via: PeerId | None = None  # the relay of a relayed link
    since: float | None = None  # when the link was established (wall clock)
    rate_in: float = 0.0  # bytes/s over the last seconds
    rate_out: float = 0.0
    banned_until: float | None = None


class PeerManager:
    """Keeps links to the configured peers and accepts others; routes HAVE messages to the index."""

    def __init__(
        self,
        identity: Identity,
        hello: m.Hello,
        index: Index,
        on_request: RequestHandler,
        book: AddressBook,
        member: Callable[[PeerId], bool] = lambda _: False,
    ) -> None:
        self.identity = identity
        self.hello = hello
        self.index = index
        self.book = book  # where each peer can be reached: records, then hints
        self.on_request = on_request
        self.member = member  # members' claims are not capped like outsiders'
        self.ready: Callable[[PeerLink], Awaitable[None]] = _at_once  # when to start a link's inventory
        self.links: dict[PeerId, PeerLink] = {}
        self.senders: dict[PeerLink, InventorySender] = {}
        self.inventory: Inventory = index  # what we announce (the node adds its gets in progress)
        self.intake = HaveIntake(index, member, self._recorded)
        self.inventoried: set[PeerId] = set()  # peers whose whole inventory we have recorded on this link
        self._tasks: set[asyncio.Task[None]] = set()  # replaced links draining
        self.banned: dict[PeerId, float] = {}
        self._keepers: dict[PeerId, asyncio.Task[None]] = {}
        self._wake: dict[PeerId, asyncio.Event] = {}  # set when a peer's addresses change
        self._reaching: set[PeerId] = set()  # peers `reach` is dialing once
        self.local: Callable[[], Address | None] = lambda: None  # our listening address
        # Peers we dial from our listening port: directories and relays, whose view of where we come
        # from must be the NAT mapping of that port (what a hole punch aims at). Dials to other
        # peers leave from any port, so a failed one cannot leave a NAT state on the punch's path.
        self.from_listen_port: Callable[[PeerId], bool] = lambda _: False
        self._meter: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closing = False
        self.have_version = 0  # bumps on every HAVE received: holder maps rebuild lazily
        self.last_seen: dict[PeerId, float] = {}  # when each peer's link last closed (wall clock)
        self.on_link: Callable[[PeerLink], None] | None = None  # a new link is registered
        self.on_notice_extra: Callable[[PeerLink, m.Message], None] | None = None  # notices besides HAVE
        self.on_claims: Callable[[list[bytes]], None] = lambda _: None  # objects whose claims changed
        self.lookup: Callable[[PeerId], Awaitable[bool]] = _nothing_new  # ask directories; True if newer

    def start(self) -> None:
        """Dial every stored peer (and keep dialing); measure every link's rates."""
        for raw, address in self.index.peers():
            self.book.hint(PeerId(raw), [address])
            self._keep(PeerId(raw))
        self._meter = asyncio.get_running_loop().create_task(self._measure())

    async def stop(self, timeout: float = 1.0) -> None:
        """Stop dialing and close every link; waits at most `timeout` s for dials and links to end."""
        self._closing = True  # keepers started from now on (add, ensure) end at once
        if self._meter is not None:
            self._meter.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        links = list(self.links.values())
        for link in links:
            link.close("shutting down")
        self.intake.stop()
        for task in self._tasks:
            task.cancel()
        keepers = {t for t in self._keepers.values() if not t.done()}
        while keepers and loop.time() < deadline:
            # Cancel again each round: asyncio.wait_for (Python 3.11) drops a cancel that lands as it finishes.
            for task in keepers:
                task.cancel()
            _, keepers = await asyncio.wait(keepers, timeout=0.1)
        closing = {lk.closed for lk in links if not lk.closed.done()}
        if closing:
            _, closing = await asyncio.wait(closing, timeout=max(0.0, deadline - loop.time()))
        if keepers or closing:
            log.warning("%d dial(s) and %d link(s) still open after %.1f s", len(keepers), len(closing), timeout)

    def add(self, peer_id: PeerId, address: Address) -> None:
        """Persist a peer and start keeping a connection to it."""
        self.index.add_peer(peer_id.public_key, str(address))
        self.book.hint(peer_id, [str(address)])
        old = self._keepers.pop(peer_id, None)
        if old is not None:
            old.cancel()
        self._keep(peer_id)

    def ensure(self, peer_id: PeerId, hints: Iterable[str] = ()) -> None:
        """Keep a connection to a peer without persisting it (cloud members come from the document)."""
        self.book.hint(peer_id, hints)
        if peer_id != self.identity.peer_id and peer_id not in self._keepers and not self._closing:
            self._keep(peer_id)

    async def reach(self, peer_id: PeerId, hints: Iterable[str], timeout: float = REACH_TIMEOUT) -> PeerLink:
        """A link to a peer now (its existing one, or a new one), by every candidate known and, failing
        those, what the directories know; for a one-off request such as a join.

        A new link is not registered: the caller closes it when done (a joiner is not a member
        yet, so the link the cloud keeps comes after). PeerError when none came up within `timeout`.
        """
        self.book.hint(peer_id, hints)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._reaching.add(peer_id)  # its records are wanted while we try
        try:
            return await self._reach(peer_id, deadline)
        finally:
            self._reaching.discard(peer_id)

    async def _reach(self, peer_id: PeerId, deadline: float) -> PeerLink:
        loop = asyncio.get_running_loop()
        errors = "no attempt"
        while loop.time() < deadline:
            link = self.links.get(peer_id)
            if link is not None:
                return link
            ctx = self.context(peer_id)
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    link = await dial_any(self.book.candidates(peer_id), ctx)
            except (PeerError, TimeoutError) as e:
                errors = str(e) or "timed out"
                if not await self.lookup(peer_id):
                    await asyncio.sleep(1.0)  # directory links may still be coming up
                continue
            return link
        raise PeerError(errors)

    def context(self, peer_id: PeerId) -> DialContext:
        """What a dialer needs to reach `peer_id` on behalf of this node."""
        local = self.local() if self.from_listen_port(peer_id) else None
        return DialContext(
            self.identity, self.hello, peer_id, self.on_request, self.on_notice, lambda: self.links, local
        )

    def keeps(self, peer_id: PeerId) -> bool:
        """True for a peer this node keeps a link to (configured, a member) or is reaching now."""
        return peer_id in self._keepers or peer_id in self._reaching

    def wake(self, peer_id: PeerId) -> None:
        """A peer's addresses changed: a keeper waiting to redial it tries at once."""
        event = self._wake.get(peer_id)
        if event is not None and peer_id not in self.links:
            event.set()

    def drop(self, peer_id: PeerId) -> None:
        """Stop keeping a connection that `ensure` started (a peer added by hand stays)."""
        if any(raw == peer_id.public_key for raw, _ in self.index.peers()):
            return
        task = self._keepers.pop(peer_id, None)
        if task is not None:
            task.cancel()
        self._wake.pop(peer_id, None)

    def remove(self, peer_id: PeerId) -> bool:
        """Forget a peer: stop dialing and close its link."""
        task = self._keepers.pop(peer_id, None)
        if task is not None:
            task.cancel()
        link = self.links.pop(peer_id, None)
        if link is not None:
            link.close("removed")
        return self.index.remove_peer(peer_id.public_key) or link is not None

    def ban(self, peer_id: PeerId, reason: str) -> None:
        """Drop a peer that misbehaved and refuse it for a while."""
        log.warning("banning %s for %.0f s: %s", peer_id.short(), BAN_SECONDS, reason)
        self.banned[peer_id] = time.monotonic() + BAN_SECONDS
        link = self.links.pop(peer_id, None)
        if link is not None:
            link.close(f"banned: {reason}")
        self._changed.set()

    def is_banned(self, peer_id: PeerId) -> bool:
        """True while a ban lasts."""
        until = self.banned.get(peer_id)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self.banned[peer_id]
            return False
        return True

    async def changed(self, timeout: float) -> None:
        """Wait until a link comes or goes or a HAVE arrives (or the timeout)."""
        self._changed.clear()
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for drops a cancel that arrives as
        # the event fires, and a task that swallows its cancel hangs the daemon's shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    def info(self) -> list[PeerInfo]:
        """Every configured, kept or connected peer, for `peercloud peers`."""
        configured = {PeerId(raw) for raw, _ in self.index.peers()}
        out = []
        for pid in sorted(configured | set(self._keepers) | set(self.links)):
            link = self.links.get(pid)
            if link is None:
                known = self.book.candidates(pid)
                out.append(PeerInfo(pid, known[0].address if known else None, banned_until=self.banned.get(pid)))
                continue
            rate_in, rate_out = link.meter.rates()
            out.append(
                PeerInfo(
                    pid,
                    link.remote,
                    True,
                    link.rtt,
                    link.conn.bytes_in,
                    link.conn.bytes_out,
                    link.path,
                    link.via,
                    link.since,
                    rate_in,
                    rate_out,
                    self.banned.get(pid),
                )
            )
        return out

    async def _measure(self) -> None:
        """Sample every link's byte counters once a second, for its transfer rates."""
        while True:
            now = time.monotonic()
            for link in list(self.links.values()):
                link.meter.sample(now, link.conn.bytes_in, link.conn.bytes_out)
            await asyncio.sleep(1.0)

    def register(self, link: PeerLink) -> None:
        """A link finished its handshake (dialed or accepted): keep one per peer, say what we hold."""
        pid = link.peer_id
        assert pid is not None
        if self.is_banned(pid) or self._closing:
            link.close("banned" if not self._closing else "shutting down")
            return
        existing = self.links.get(pid)
        if existing is not None and existing is not link and (existing.path == "relayed") != (link.path == "relayed"):
            # A direct path beats a relayed one, on both ends: requests in flight on the relayed
            # link finish there, new ones take the direct link, and then the relayed one closes.
            if link.path == "relayed":
                link.close("a direct link exists")
                return
            self._retire(existing)
        elif existing is not None and existing is not link:
            # Both sides dialed: keep the link whose dialer has the smaller peer ID, on both ends.
            def dialer(lk: PeerLink) -> bytes:
                return self.identity.peer_id.public_key if lk.conn.initiator else pid.public_key

            keep, drop = (existing, link) if dialer(existing) < dialer(link) else (link, existing)
            drop.close("duplicate connection")
            if keep is existing:
                return
        elif len(self.links) >= MAX_LINKS and not self.member(pid) and pid not in self._keepers:
            link.close("too many peers connected")
            return
        self.links[pid] = link
        log.info(
            "link to %s up: %s%s from %s",
            pid.short(),
            link.path,
            f" via {link.via.short()}" if link.via else "",
            link.remote,
        )
        self.inventoried.discard(pid)
        link.closed.add_done_callback(lambda _: self._unregister(link))
        if self.on_link is not None:
            self.on_link(link)
        self._changed.set()
        sender = InventorySender(link, self.inventory, self.ready)
        self.senders[link] = sender
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._keepalive(link)), loop.create_task(sender.run())]

        def closed(_: object) -> None:
            self.senders.pop(link, None)
            for task in tasks:
                task.cancel()

        link.closed.add_done_callback(closed)

    def _retire(self, old: PeerLink) -> None:
        """Close a link replaced by a better path once nothing is in flight on it (at most RETIRE s)."""

        async def drain() -> None:
            deadline = time.monotonic() + RETIRE
            while not old.idle() and time.monotonic() < deadline and old.conn.state is State.OPEN:
                await asyncio.sleep(0.1)
            old.close("moved to a direct path")

        task = asyncio.get_running_loop().create_task(drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keepalive(self, link: PeerLink) -> None:
        """Measure RTT now and every KEEPALIVE seconds; a peer silent for KEEPALIVE_MISSES pings is dropped.

        A ping unanswered while other bytes kept arriving is no silence (the pong is queued behind
        them): only a link that brought nothing at all for the whole wait counts as a miss.
        """
        misses = 0
        while link.conn.state is State.OPEN:
            before = link.conn.bytes_in
            try:
                await link.ping(timeout=KEEPALIVE)
            except PeerError:
                if link.conn.state is not State.OPEN:
                    return
                misses = 0 if link.conn.bytes_in > before else misses + 1
                log.info("ping to %s unanswered (%d silent): %s", link.peer_id, misses, link.state_line())
                if misses >= KEEPALIVE_MISSES:
                    link.close("keepalive: no answer to ping")
                    return
                continue
            misses = 0
            await asyncio.sleep(KEEPALIVE)

    def _unregister(self, link: PeerLink) -> None:
        if link.peer_id is not None and self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            self.inventoried.discard(link.peer_id)
            self.last_seen[link.peer_id] = time.time()
            self._changed.set()

    def on_notice(self, link: PeerLink, msg: m.Message) -> None:
        """Store a peer's HAVEs (one transaction per message); pass other notices on."""
        peer = link.peer_id
        if peer is None:
            return
        if isinstance(msg, m.Have):
            claims = [Claim(msg.object, msg.bitmap, msg.offset, msg.pinned, msg.provisional)]
        elif isinstance(msg, m.HaveQuery):
            sender = self.senders.get(link)
            ids = [msg.objects[i : i + 32] for i in range(0, len(msg.objects), 32)]
            if sender is not None:
                for oid in self.index.known(ids[:2048]):
                    sender.announce(oid)
            return
        elif isinstance(msg, m.Haves) and not msg.entries:
            claims = None  # the end of its initial inventory, once what came before is recorded
        elif isinstance(msg, m.Haves):
            try:
                entries = batches.unpack_haves(msg.entries)
            except m.ProtocolError as e:
                link.close(str(e))
                return
            claims = [Claim(e.object_id, e.bitmap, 0, e.pinned, e.provisional) for e in entries]
        else:
            if self.on_notice_extra is not None:
                self.on_notice_extra(link, msg)
            return
        self.intake.add(link, peer, claims)

    def _recorded(self, link: PeerLink, peer: PeerId, batch: list[Claim] | None, kept: int) -> None:
        """A HAVE message was recorded: the end of an inventory, or claims that change holder maps."""
        if batch is None and self.links.get(peer) is link:
            self.inventoried.add(peer)
            self._changed.set()
        if kept and batch is not None:
            self.have_version += 1
            self._changed.set()
            self.on_claims([c.object_id for c in batch])

    def query(self, object_id: bytes) -> None:
        """Ask every connected peer for its HAVE of an object we just learned."""
        for link in list(self.links.values()):
            if link.conn.state is State.OPEN:
                link.notify(m.HaveQuery(object_id))

    def announce(self, object_id: bytes) -> None:
        """Our holdings of an object changed: every connected peer hears of it (batched, paced)."""
        for sender in list(self.senders.values()):
            sender.announce(object_id)

    def _keep(self, peer_id: PeerId) -> None:
        self._wake[peer_id] = asyncio.Event()
        self._keepers[peer_id] = asyncio.get_running_loop().create_task(self._keeper(peer_id))

    async def _keeper(self, peer_id: PeerId) -> None:
        """Dial until connected; when the link drops, dial again with exponential backoff.

        Each attempt dials every candidate the address book knows now (`connect/dial.py`); a
        newer record of the peer (`wake`) cuts the wait short and resets the backoff.
        """
        delay = BACKOFF_START
        wake = self._wake[peer_id]
        while not self._closing:
            link = self.links.get(peer_id)
            if link is not None:
                up_since = time.monotonic()
                await asyncio.shield(link.closed)
                if time.monotonic() - up_since >= STABLE_LINK:
                    delay = BACKOFF_START
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # never redial in a tight loop
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if not self.is_banned(peer_id):
                wake.clear()
                ctx = self.context(peer_id)
                try:
                    link = await dial_any(self.book.candidates(peer_id), ctx)
                except PeerError as e:
                    log.info("dial %s failed: %s", peer_id.short(), e)
                    if await self.lookup(peer_id):
                        continue  # a directory knew newer addresses: dial them now
                else:
                    self.register(link)
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * random.uniform(0.8, 1.2)):
                    await wake.wait()
                    delay = BACKOFF_START / 2  # new addresses: try them now, and soon again
            delay = min(delay * 2, BACKOFF_MAX)


async def _at_once(_: PeerLink) -> None:
    return None


async def _nothing_new(_: PeerId) -> bool:
    return False
