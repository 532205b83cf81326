"""The relay's control plane: reservations held over authenticated links, circuits opened on
request, quotas with typed refusals. The data plane is `splice.py`.

Whom it serves: everyone with the `relay` role (`peercloud up --role relay`), or only the
members of its own cloud with `[relay] serve = "members"` (a member volunteering as a
supernode). Rates and byte quotas apply to circuits with an end outside the relay's cloud; a
cloud's own members are never throttled by default.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from peercloud.identity import PeerId
from peercloud.net.link import Address, PeerLink
from peercloud.relay import splice
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelaySettings:
    """`[relay]` in config.toml: whom to serve and how much."""

    serve: str = "none"  # none | members | all
    listen: str = "0.0.0.0:4652"  # where circuits join (port 0: any free one)
    reservations: int = 256  # reservations held at once
    circuits_per_peer: int = 16  # open circuits with one peer at either end
    circuit_rate: int = 0  # bytes/s per circuit with an outsider end (0: unlimited)
    circuit_bytes: int = 0  # bytes per circuit with an outsider end (0: unlimited)
    reservation_ttl: int = 3600  # seconds a reservation lasts unless renewed


@dataclass
class _Reservation:
    link: PeerLink
    expires_at: float


class RelayServer:
    """Reservations, circuits and their splice listener."""

    def __init__(self, settings: RelaySettings, is_member: Callable[[PeerId], bool]) -> None:
        self.settings = settings
        self.is_member = is_member
        self.reservations: dict[PeerId, _Reservation] = {}
        self.circuits: dict[bytes, splice.Circuit] = {}  # by either token, while joining and open
        self.open_with: dict[PeerId, int] = {}  # circuits per peer (either end)
        self.port = 0
        self._server: asyncio.Server | None = None
        self.carried = 0  # bytes through circuits that ended
        self.joining = splice.Joining()

    async def start(self) -> None:
        """Listen for circuit ends."""
        where = Address.parse(self.settings.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: splice.SpliceEnd(self.circuits.get, self.joining), where.host, where.port, reuse_address=True
            )
        except OSError as e:  # the daemon reports it: say it is the relay's port, not the peers'
            raise OSError(e.errno, f"relay.listen {self.settings.listen}: {e.strerror or e}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("relay: circuits join on port %d (serving %s)", self.port, self.settings.serve)

    def stop(self) -> None:
        """Close the listener and every circuit."""
        if self._server is not None:
            self._server.close()
        for circuit in list(self.circuits.values()):
            circuit.close("relay stopping")

    def serves(self, peer: PeerId) -> bool:
        """True when this relay serves that peer at all."""
        return self.settings.serve == "all" or (self.settings.serve == "members" and self.is_member(peer))

    async def on_request(self, link: PeerLink, msg: m.Reserve | m.CircuitOpen) -> None:
        """Serve one request from an authenticated peer."""
        peer = link.peer_id
        assert peer is not None
        if not self.serves(peer):
            await link.answer(msg.id, m.Error(msg.id, "refused", "this node does not relay for you"))
        elif isinstance(msg, m.Reserve):
            await link.answer(msg.id, self.reserve(msg.id, peer, link))
        else:
            await link.answer(msg.id, self.open(msg.id, peer, PeerId(msg.peer)))

    def reserve(self, rid: int, peer: PeerId, link: PeerLink) -> m.Message:
        """Hold (or renew) a reservation for the link's peer."""
        now = time.time()
        self._expire(now)
        if peer not in self.reservations and len(self.reservations) >= self.settings.reservations:
            return m.Error(rid, "full", f"this relay holds its {self.settings.reservations} reservations")
        expires = now + self.settings.reservation_ttl
        self.reservations[peer] = _Reservation(link, expires)
        link.closed.add_done_callback(lambda _: self._drop(peer, link))
        return m.Reserved(rid, int(expires), self.port, link.remote)

    def open(self, rid: int, asker: PeerId, target: PeerId) -> m.Message:
        """Prepare a circuit from `asker` to a reserved `target` and tell the target."""
        now = time.time()
        held = self.reservations.get(target)
        if held is None or held.expires_at <= now or held.link.conn.state is not State.OPEN:
            return m.Error(rid, "no_reservation", f"{target.short()} holds no reservation on this relay")
        for p in (asker, target):
            if self.open_with.get(p, 0) >= self.settings.circuits_per_peer:
                return m.Error(
                    rid, "over_quota", f"{p.short()} has {self.settings.circuits_per_peer} circuits open here"
                )
        token_a, token_b = os.urandom(splice.TOKEN_SIZE), os.urandom(splice.TOKEN_SIZE)
        outsider = not (self.is_member(asker) and self.is_member(target))
        limits = splice.Limits(self.settings.circuit_rate, self.settings.circuit_bytes) if outsider else splice.Limits()
        circuit = splice.Circuit(token_a, token_b, limits, lambda c: self._ended(c, asker, target))
        self.circuits[token_a] = self.circuits[token_b] = circuit
        for p in (asker, target):
            self.open_with[p] = self.open_with.get(p, 0) + 1
        # The circuit is dropped if its ends never join.
        asyncio.get_running_loop().call_later(splice.JOIN_TIMEOUT, self._unjoined, circuit)
        held.link.notify(m.CircuitIncoming(asker.public_key, token_b, self.port))
        log.info("relay: circuit %s → %s", asker.short(), target.short())
        return m.Circuit(rid, token_a, self.port)

    def status(self) -> dict[str, int | str]:
        """What the relay is doing, for `status --node`."""
        circuits = {id(c): c for c in self.circuits.values()}.values()  # each is listed under both tokens
        return {
            "serve": self.settings.serve,
            "port": self.port,
            "reservations": len(self.reservations),
            "circuits": len(circuits),
            "joining": self.joining.count,
            "joins_refused": self.joining.refused,
            "bytes_carried": self.carried + sum(c.carried for c in circuits),
        }

    def _unjoined(self, circuit: splice.Circuit) -> None:
        if len(circuit.ends) < 2:
            circuit.close("the ends did not both join in time")

    def _ended(self, circuit: splice.Circuit, a: PeerId, b: PeerId) -> None:
        self.carried += circuit.carried
        self.circuits.pop(circuit.token_a, None)
        self.circuits.pop(circuit.token_b, None)
        for p in (a, b):
            left = self.open_with.get(p, 0) - 1
            if left > 0:
                self.open_with[p] = left
            else:
                self.open_with.pop(p, None)

    def _drop(self, peer: PeerId, link: PeerLink) -> None:
        held = self.reservations.get(peer)
        if held is not None and held.link is link:
            del self.reservations[peer]

    def _expire(self, now: float) -> None:
        for peer in [p for p, r in self.reservations.items() if r.expires_at <= now]:
            del self.reservations[peer]
