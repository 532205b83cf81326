"""The peers a node keeps connections to: dialing with backoff, one link per peer, HAVE gossip."""

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from peercloud.errors import UsageError
from peercloud.identity import Identity, PeerId
from peercloud.net.link import Address, PeerError, PeerLink, RequestHandler, dial
from peercloud.store.index import Index
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
BAN_SECONDS = 600.0
KEEPALIVE = 15.0  # ping interval; a link that misses one is closed (and re-dialed)
STABLE_LINK = 30.0  # a link that lived this long resets the dial backoff
MAX_HAVE_OBJECTS = 100_000  # distinct objects one connection may announce


@dataclass
class PeerInfo:
    """What the node knows about one peer right now."""

    peer_id: PeerId
    address: str | None
    connected: bool
    rtt: float | None
    bytes_in: int
    bytes_out: int
    path: str
    banned_until: float | None


class PeerManager:
    """Keeps links to the configured peers and accepts others; routes HAVE messages to the index."""

    def __init__(
        self,
        identity: Identity,
        hello: m.Hello,
        index: Index,
        on_request: RequestHandler,
        local_haves: Callable[[], list[tuple[bytes, bytes, bool]]],
    ) -> None:
        self.identity = identity
        self.hello = hello
        self.index = index
        self.on_request = on_request
        self.local_haves = local_haves
        self.links: dict[PeerId, PeerLink] = {}
        self.banned: dict[PeerId, float] = {}
        self._keepers: dict[PeerId, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._closing = False
        self.have_version = 0  # bumps on every HAVE received: holder maps rebuild lazily
        self._announced: weakref.WeakKeyDictionary[PeerLink, set[bytes]] = weakref.WeakKeyDictionary()
        self.last_seen: dict[PeerId, float] = {}  # when each peer's link last closed (wall clock)
        self.on_link: Callable[[PeerLink], None] | None = None  # after HAVEs are sent to a new link
        self.on_notice_extra: Callable[[PeerLink, m.Message], None] | None = None  # notices besides HAVE

    def start(self) -> None:
        """Dial every stored peer (and keep dialing)."""
        for raw, address in self.index.peers():
            self._keep(PeerId(raw), address)

    async def stop(self) -> None:
        """Close every link and stop dialing."""
        self._closing = True
        for task in self._keepers.values():
            task.cancel()
        for link in list(self.links.values()):
            link.close("shutting down")
        await asyncio.sleep(0)

    def add(self, peer_id: PeerId, address: Address) -> None:
        """Persist a peer and start keeping a connection to it."""
        self.index.add_peer(peer_id.public_key, str(address))
        old = self._keepers.pop(peer_id, None)
        if old is not None:
            old.cancel()
        self._keep(peer_id, str(address))

    def ensure(self, peer_id: PeerId, address: str) -> None:
        """Keep a connection to a peer without persisting it (cloud members come from the document)."""
        if peer_id != self.identity.peer_id and peer_id not in self._keepers and not self._closing:
            self._keep(peer_id, address)

    def drop(self, peer_id: PeerId) -> None:
        """Stop keeping a connection that `ensure` started (a peer added by hand stays)."""
        if any(raw == peer_id.public_key for raw, _ in self.index.peers()):
            return
        task = self._keepers.pop(peer_id, None)
        if task is not None:
            task.cancel()

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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def info(self) -> list[PeerInfo]:
        """Every configured or connected peer, for `peercloud peers`."""
        addresses = {PeerId(raw): addr for raw, addr in self.index.peers()}
        out = []
        for pid in sorted(set(addresses) | set(self.links)):
            link = self.links.get(pid)
            until = self.banned.get(pid)
            out.append(
                PeerInfo(
                    pid,
                    addresses.get(pid, link.remote if link else None),
                    link is not None,
                    link.rtt if link else None,
                    link.conn.bytes_in if link else 0,
                    link.conn.bytes_out if link else 0,
                    ("direct (out)" if link.conn.initiator else "direct (in)") if link else "-",
                    until,
                )
            )
        return out

    def register(self, link: PeerLink) -> None:
        """A link finished its handshake (dialed or accepted): keep one per peer, say what we hold."""
        pid = link.peer_id
        assert pid is not None
        if self.is_banned(pid) or self._closing:
            link.close("banned" if not self._closing else "shutting down")
            return
        existing = self.links.get(pid)
        if existing is not None and existing is not link:
            # Both sides dialed: keep the link whose dialer has the smaller peer ID, on both ends.
            def dialer(lk: PeerLink) -> bytes:
                return self.identity.peer_id.public_key if lk.conn.initiator else pid.public_key

            keep, drop = (existing, link) if dialer(existing) < dialer(link) else (link, existing)
            drop.close("duplicate connection")
            if keep is existing:
                return
        self.links[pid] = link
        link.closed.add_done_callback(lambda _: self._unregister(link))
        for object_id, bitmap, pinned in self.local_haves():
            self._send_have(link, object_id, bitmap, pinned)
        if self.on_link is not None:
            self.on_link(link)
        self._changed.set()
        task = asyncio.get_running_loop().create_task(self._keepalive(link))
        link.closed.add_done_callback(lambda _: task.cancel())

    async def _keepalive(self, link: PeerLink) -> None:
        """Measure RTT now and every KEEPALIVE seconds; a silent peer's link is closed."""
        while link.conn.state is State.OPEN:
            try:
                await link.ping(timeout=KEEPALIVE)
            except PeerError:
                link.close("keepalive: no answer to ping")
                return
            await asyncio.sleep(KEEPALIVE)

    def _unregister(self, link: PeerLink) -> None:
        if link.peer_id is not None and self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            self.last_seen[link.peer_id] = time.time()
            self._changed.set()

    def on_notice(self, link: PeerLink, msg: m.Message) -> None:
        """Store a peer's HAVE; pass other notices on."""
        if not isinstance(msg, m.Have):
            if self.on_notice_extra is not None and link.peer_id is not None:
                self.on_notice_extra(link, msg)
            return
        if link.peer_id is not None:
            announced = self._announced.setdefault(link, set())
            announced.add(msg.object)
            if len(announced) > MAX_HAVE_OBJECTS:
                link.close(f"announced more than {MAX_HAVE_OBJECTS} objects")
                return
            self.index.set_holding(link.peer_id.public_key, msg.object, msg.bitmap, msg.offset, msg.pinned)
            self.have_version += 1
            self._changed.set()

    def announce(self, object_id: bytes, bitmap: bytes, pinned: bool = False) -> None:
        """Tell every connected peer what we now hold of an object (and whether we pinned it)."""
        for link in list(self.links.values()):
            self._send_have(link, object_id, bitmap, pinned)

    def _send_have(self, link: PeerLink, object_id: bytes, bitmap: bytes, pinned: bool) -> None:
        if link.conn.state is not State.OPEN:
            return
        for offset in range(0, max(1, len(bitmap)), m.HAVE_PIECE):
            link.notify(m.Have(object_id, bitmap[offset : offset + m.HAVE_PIECE], offset, pinned))

    def _keep(self, peer_id: PeerId, address: str) -> None:
        self._keepers[peer_id] = asyncio.get_running_loop().create_task(self._keeper(peer_id, address))

    async def _keeper(self, peer_id: PeerId, address: str) -> None:
        """Dial until connected; when the link drops, dial again with exponential backoff."""
        delay = BACKOFF_START
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
                try:
                    link = await dial(
                        Address.parse(address),
                        self.identity,
                        self.hello,
                        self.on_request,
                        expected_peer=peer_id,
                        on_notice=self.on_notice,
                    )
                except PeerError as e:
                    log.info("dial %s at %s failed: %s", peer_id.short(), address, e)
                else:
                    self.register(link)
                    continue
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX)


def parse_peer(text: str) -> tuple[PeerId, Address]:
    """PEERID@HOST:PORT, as users paste it."""
    peer, sep, address = text.strip().partition("@")
    if not sep:
        raise UsageError(f"expected PEERID@HOST:PORT, got {text!r}")
    return PeerId.parse(peer), Address.parse(address)
