"""Using relays: hold a reservation on each configured relay (renewed before it lapses), put the
relays in our record, and accept the circuits peers open to us through them.

Each accepted circuit is a fresh TCP connection to the relay's splice port; once the relay says
GO it carries our end of a Noise XX handshake with the peer that asked (we answer as responder,
and expect exactly that peer), and the link is registered like any other, path `relayed`.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from peercloud.connect.relay_dial import join_circuit
from peercloud.identity import Identity, PeerId
from peercloud.net.link import Address, NoticeHandler, PeerError, PeerLink, RequestHandler, dial
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
CALL_TIMEOUT = 10.0
RETRY = 30.0  # seconds before asking a relay that refused us again


@dataclass
class Uptime:
    """How much of the time since we started using a relay it held a reservation for us."""

    since: float = field(default_factory=time.monotonic)
    up: float = 0.0  # seconds reserved, reservations that ended
    up_at: float | None = None  # when the current reservation began

    def ratio(self) -> float:
        """Share of the time reserved, 0 to 1 (1 while too young to tell)."""
        now = time.monotonic()
        total = now - self.since
        current = now - self.up_at if self.up_at is not None else 0.0
        return 1.0 if total < 1.0 else min(1.0, (self.up + current) / total)

    def change(self, reserved: bool) -> None:
        """A reservation began or ended."""
        now = time.monotonic()
        if reserved and self.up_at is None:
            self.up_at = now
        elif not reserved and self.up_at is not None:
            self.up += now - self.up_at
            self.up_at = None


class RelayClient:
    """Reservations on the configured relays, and circuits accepted through them."""

    def __init__(
        self,
        identity: Identity,
        hello: m.Hello,
        links: Callable[[], dict[PeerId, PeerLink]],
        keep: Callable[[PeerId, list[str]], None],
        on_request: RequestHandler,
        on_notice: NoticeHandler,
        register: Callable[[PeerLink], None],
        observed: Callable[[PeerId, str], None],
        changed: Callable[[], None],
    ) -> None:
        self.identity = identity
        self.hello = hello
        self.links = links
        self.keep = keep  # keep a link to a relay (PeerManager.ensure)
        self.on_request = on_request
        self.on_notice = on_notice
        self.register = register  # a circuit's link joins the peer manager
        self.observed = observed
        self.changed = changed  # our reservations changed: re-sign our record
        self.relays: dict[PeerId, str] = {}  # relay → the address we reach it at
        self.reserved: dict[PeerId, float] = {}  # relay → when our reservation lapses
        self.uptime: dict[PeerId, Uptime] = {}  # relay → how reliably it held our reservation
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding: dict[PeerId, asyncio.Task[None]] = {}

    def add(self, peer: PeerId, address: Address) -> None:
        """Use one more relay (from config)."""
        if peer in self.relays:
            return
        self.relays[peer] = str(address)
        self.uptime[peer] = Uptime()
        self.keep(peer, [str(address)])
        link = self.links().get(peer)
        if link is not None:
            self.on_link(link)

    def configured(self) -> list[str]:
        """PEERID@HOST:PORT of every relay in use."""
        return [f"{peer}@{address}" for peer, address in self.relays.items()]

    def rtt(self, peer: PeerId) -> float | None:
        """Round trip to a relay in seconds, None when not linked or not measured yet."""
        link = self.links().get(peer)
        return link.rtt if link is not None else None

    def candidates(self) -> list[str]:
        """Our relay candidates, `RELAYPEERID@HOST:PORT`, best first: by uptime in steps of a
        tenth (a relay that keeps dropping us costs every peer a redial), then by round trip."""

        def rank(peer: PeerId) -> tuple[float, float]:
            rtt = self.rtt(peer)
            return (-round(self.uptime[peer].ratio(), 1), rtt if rtt is not None else 1e9)

        return [f"{peer}@{self.relays[peer]}" for peer in sorted(self.reserved, key=rank)]

    def on_link(self, link: PeerLink) -> None:
        """A link to a relay came up: hold a reservation on it while it lasts."""
        peer = link.peer_id
        if peer in self.relays and peer is not None:
            old = self._holding.pop(peer, None)
            if old is not None:
                old.cancel()
            self._holding[peer] = self._spawn(self._hold(peer, link))

    def on_incoming(self, link: PeerLink, msg: m.CircuitIncoming) -> None:
        """A relay we hold a reservation on says a peer wants a circuit to us."""
        relay = link.peer_id
        if relay not in self.reserved or relay is None:
            return  # only relays we chose may send us circuits
        self._spawn(self._accept(relay, Address.parse(self.relays[relay]).host, msg))

    def stop(self) -> None:
        """Stop renewing and accepting."""
        for task in self._tasks:
            task.cancel()

    async def _hold(self, relay: PeerId, link: PeerLink) -> None:
        """Reserve, and renew at half the lifetime, while the link is open."""
        try:
            while link.conn.state is State.OPEN:
                try:
                    answer = await link.call(m.Reserve(link.next_id()), CALL_TIMEOUT)
                except PeerError as e:
                    log.warning("relay %s refused a reservation: %s", relay.short(), e)
                    self._lapse(relay)
                    await asyncio.sleep(RETRY)
                    continue
                assert isinstance(answer.message, m.Reserved)
                fresh = relay not in self.reserved
                self.reserved[relay] = answer.message.expires_at
                self.uptime[relay].change(True)
                self.observed(relay, answer.message.observed)
                if fresh:
                    log.info("holding a reservation on relay %s", relay.short())
                    self.changed()
                left = answer.message.expires_at - time.time()
                # Until the renewal, or until the link drops: a relay gone is out of our record at once.
                await asyncio.wait({link.closed}, timeout=max(5.0, min(left, 3600.0) / 2))
        finally:
            self._lapse(relay)

    def _lapse(self, relay: PeerId) -> None:
        if self.reserved.pop(relay, None) is not None:
            self.uptime[relay].change(False)
            self.changed()

    async def _accept(self, relay: PeerId, host: str, msg: m.CircuitIncoming) -> None:
        peer = PeerId(msg.peer)
        try:
            sock = await join_circuit(Address(host, msg.port), msg.token)
            link = await dial(
                Address(host, msg.port),
                self.identity,
                self.hello,
                self.on_request,
                expected_peer=peer,
                on_notice=self.on_notice,
                sock=sock,
                initiator=False,
            )
        except (PeerError, OSError) as e:
            log.info("circuit from %s via relay %s failed: %s", peer.short(), relay.short(), e)
            return
        link.via = relay
        self.register(link)

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
