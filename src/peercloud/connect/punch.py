"""Hole punching over a relayed link, as libp2p's DCUtR does it, for TCP.

The side that opened the circuit (A) asks the other (B) for its public addresses (`punch`),
measuring the round trip; B answers with its own (`punch_ok`); A sends `punch_go` and, half a
round trip later, both dial each other's public addresses at the same moment from their
listening port. Each NAT then holds a mapping for the outgoing SYN when the other side's SYN
arrives, and TCP's simultaneous open makes one connection of the two. Up to `TRIES` rounds; on
success the two run Noise XX over it, the initiator being the side with the smaller peer ID
(both ends called connect(), so "who dialed" cannot say), and the link is `punched`.

With a symmetric NAT the mapping toward the other peer is not the one the relay saw, so the SYN
arrives at a closed port and the punch fails: the relayed link carries on (and it is tried again
later, with backoff).
"""

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from peercloud.connect.book import kind_of
from peercloud.connect.dial import DialContext
from peercloud.connect.record import Kind
from peercloud.connect.sockets import connect_from
from peercloud.net.link import Address, PeerError, PeerLink, dial
from peercloud.ratelimit import Buckets
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
TRIES = 3
CONNECT_TIMEOUT = 3.0  # seconds one simultaneous connect may take (SYN retransmits included)
CALL_TIMEOUT = 10.0


async def simultaneous(
    local: Address | None, targets: list[Address], timeout: float = CONNECT_TIMEOUT
) -> socket.socket:
    """Connect to every target at once from our listening port; the first TCP connection wins."""
    if not targets:
        raise PeerError("no public address to punch to")
    # No fallback to another port: a punch from any other port cannot meet the peer's.
    tasks = [asyncio.ensure_future(connect_from(local, t, timeout, fallback=False)) for t in targets]
    winner: socket.socket | None = None
    errors = []
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                winner = await next_done
                return winner
            except (OSError, TimeoutError) as e:
                errors.append(f"{e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__}")
        raise PeerError(f"no punched connection to {', '.join(map(str, targets))}: {', '.join(errors)}")
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
            elif not t.cancelled() and t.exception() is None and t.result() is not winner:
                t.result().close()


async def handshake(sock: socket.socket, ctx: DialContext, where: Address) -> PeerLink:
    """Noise XX over a punched socket, the smaller peer ID initiating; path `punched`."""
    initiator = ctx.identity.peer_id.public_key < ctx.peer.public_key
    hello = replace(ctx.hello, path="punched" if initiator else "")
    link = await dial(
        where, ctx.identity, hello, ctx.on_request, ctx.peer, ctx.on_notice, sock=sock, initiator=initiator
    )
    link.path = "punched"
    return link


def parse_addresses(texts: tuple[str, ...]) -> list[Address]:
    """The public addresses a peer sent (at most 4); malformed and non-public ones are dropped, so
    a hostile peer cannot make us connect into our own LAN or to many hosts."""
    out = []
    for text in texts[:4]:
        try:
            address = Address.parse(text)
        except PeerError:
            continue
        if kind_of(text) is Kind.PUBLIC:
            out.append(address)
    return out


class Puncher:
    """Both roles of the punch: start one over a relayed link we dialed, answer one we accepted."""

    def __init__(
        self,
        ctx_for: Callable[[PeerLink], DialContext],
        local: Callable[[], Address | None],
        public: Callable[[], list[str]],
        register: Callable[[PeerLink], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self.ctx_for = ctx_for  # how to dial the peer of a link (identity, hello, handlers)
        self.local = local  # our listening address
        self.public = public  # our public addresses, as directories and relays observed them
        self.register = register
        self.spawn = spawn  # runs a task that outlives the relayed link's request handler
        self.failures: dict[bytes, int] = {}  # punches that failed per peer, for the backoff
        self.next_try: dict[bytes, float] = {}
        self._waiting: dict[PeerLink, asyncio.Future[None]] = {}  # answers waiting for punch_go
        # Punch requests we answer per peer: 10 a minute (each makes us connect to at most 4 public
        # addresses), plenty for a few rounds of 3 tries and restarts, too few to use us for scans.
        self._answers = Buckets(10 / 60.0, 10)

    def due(self, link: PeerLink) -> bool:
        """True when a punch over this relayed link may be tried now (backoff after failures)."""
        assert link.peer_id is not None
        return time.monotonic() >= self.next_try.get(link.peer_id.public_key, 0.0)

    async def start(self, link: PeerLink) -> bool:
        """A side: ask, measure, sync, dial. True when a punched link was registered."""
        assert link.peer_id is not None
        key = link.peer_id.public_key
        ours = self.public()
        loop = asyncio.get_running_loop()
        for attempt in range(1, TRIES + 1):
            sent = loop.time()
            try:
                answer = await link.call(m.Punch(link.next_id(), tuple(ours)), CALL_TIMEOUT)
            except PeerError as e:
                log.info("punch to %s: the peer declined: %s", link.peer_id.short(), e)
                break
            rtt = loop.time() - sent
            reply = answer.message
            assert isinstance(reply, m.PunchOk)
            targets = parse_addresses(reply.addresses)
            link.notify(m.PunchGo())
            await asyncio.sleep(rtt / 2)
            if await self._dial(link, targets, attempt):
                self.failures.pop(key, None)
                return True
        self._backoff(key)
        return False

    async def answer(self, link: PeerLink, msg: m.Punch) -> None:
        """B side: give our addresses, then dial theirs the moment `punch_go` arrives."""
        assert link.peer_id is not None
        if link in self._waiting or not self._answers.take(link.peer_id.public_key):
            await link.answer(msg.id, m.Error(msg.id, "busy", "a punch is under way or was tried too often"))
            return
        targets = parse_addresses(msg.addresses)
        go = asyncio.get_running_loop().create_future()
        self._waiting[link] = go
        await link.answer(msg.id, m.PunchOk(msg.id, tuple(self.public())))
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await go
        except TimeoutError:
            return
        finally:
            self._waiting.pop(link, None)
        # Not in this handler: the other side retires the relayed link the moment its end of the
        # handshake is done, which cancels the link's handlers while ours may still be finishing.
        self.spawn(self._dial(link, targets, 0))

    def on_go(self, link: PeerLink) -> None:
        """`punch_go` arrived: the dial in `answer` starts now."""
        go = self._waiting.get(link)
        if go is not None and not go.done():
            go.set_result(None)

    async def _dial(self, link: PeerLink, targets: list[Address], attempt: int) -> bool:
        ctx = self.ctx_for(link)
        try:
            sock = await simultaneous(self.local(), targets)
            peer_addr = sock.getpeername()
            punched = await handshake(sock, ctx, Address(peer_addr[0], peer_addr[1]))
        except (PeerError, OSError) as e:
            log.info("punch to %s (try %d) failed: %s", ctx.peer.short(), attempt, e)
            return False
        log.info("punched a direct path to %s at %s", ctx.peer.short(), punched.remote)
        self.register(punched)
        return True

    def _backoff(self, key: bytes) -> None:
        failures = self.failures.get(key, 0) + 1
        self.failures[key] = failures
        self.next_try[key] = time.monotonic() + min(60.0 * 2 ** (failures - 1), 1800.0)
