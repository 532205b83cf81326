"""The relay's data plane: a TCP listener where both ends of a circuit join with their token, and
then a byte pump between the two sockets that never looks inside.

A joining connection sends `MAGIC ‖ token` (36 bytes) and nothing else until the relay answers
one byte, `GO`, once the other end has joined too; from then on every byte read from one socket
is written to the other. Reading one side pauses while the other side's send buffer is full
(TCP backpressure end to end) and, for circuits with a rate limit, while the circuit is over
its rate; a circuit over its byte quota is closed.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

log = logging.getLogger(__name__)
MAGIC = b"PCR1"
TOKEN_SIZE = 32
PREAMBLE = len(MAGIC) + TOKEN_SIZE
GO = b"\x01"
JOIN_TIMEOUT = 10.0  # seconds for both ends to join a circuit
READ_SIZE = 256 * 1024
MAX_JOINING = 256  # connections on the splice port not yet paired, in all: a flood is refused at the door


@dataclass
class Limits:
    """What one circuit may carry: bytes per second and bytes in all (0: no limit)."""

    rate: int = 0
    total: int = 0


@dataclass
class Circuit:
    """One circuit between two peers, while its ends join and while it carries bytes."""

    token_a: bytes
    token_b: bytes
    limits: Limits
    on_end: Callable[["Circuit"], None]
    ends: dict[bytes, "SpliceEnd"] = field(default_factory=dict)
    carried: int = 0
    started: float = field(default_factory=time.monotonic)
    closed: bool = False

    def joined(self, token: bytes, end: "SpliceEnd") -> None:
        """One end arrived; with both, start pumping."""
        self.ends[token] = end
        if len(self.ends) == 2:
            a, b = self.ends[self.token_a], self.ends[self.token_b]
            a.partner, b.partner = b, a
            for end_ in (a, b):
                end_.start()

    def close(self, reason: str) -> None:
        """End both sides."""
        if self.closed:
            return
        self.closed = True
        log.info("circuit closed after %d bytes: %s", self.carried, reason)
        for end in self.ends.values():
            end.finish()
        self.on_end(self)


class Joining:
    """Counts connections on the splice port that are not paired yet."""

    def __init__(self, limit: int = MAX_JOINING) -> None:
        self.limit, self.count, self.refused = limit, 0, 0


class SpliceEnd(asyncio.Protocol):
    """One joined TCP connection: first its preamble, then half of the pump."""

    def __init__(self, find: Callable[[bytes], Circuit | None], joining: Joining) -> None:
        self.find = find  # the circuit waiting for a token, if any
        self.joining = joining
        self._counted = False
        self.transport: asyncio.Transport | None = None
        self.partner: SpliceEnd | None = None
        self.circuit: Circuit | None = None
        self._head = bytearray()
        self._early: list[bytes] = []  # bytes after the preamble, before the partner joined
        self._paused_by: set[str] = set()  # why reading is paused: "partner", "rate"
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Give the end JOIN_TIMEOUT to present a token of a circuit and see its partner join."""
        transport = cast(asyncio.Transport, transport)  # a stream's (uvloop's is not a subclass)
        self.transport = transport
        if self.joining.count >= self.joining.limit:
            self.joining.refused += 1
            transport.abort()
            return
        self.joining.count += 1
        self._counted = True
        transport.set_write_buffer_limits(high=4 * READ_SIZE)
        self._timer = asyncio.get_running_loop().call_later(JOIN_TIMEOUT, self._too_late)

    def data_received(self, data: bytes) -> None:
        """Preamble first; then every byte goes to the partner."""
        if self.partner is None:
            if self.circuit is None:
                self._head += data
                if len(self._head) < PREAMBLE:
                    return
                head, rest = bytes(self._head[:PREAMBLE]), bytes(self._head[PREAMBLE:])
                self._head.clear()
                circuit = self.find(head[len(MAGIC) :]) if head.startswith(MAGIC) else None
                if circuit is None or circuit.closed:
                    self.abort()
                    return
                self.circuit = circuit
                if rest:
                    self._early.append(rest)
                circuit.joined(head[len(MAGIC) :], self)
            else:
                self._early.append(data)
            return
        self._forward(data)

    def start(self) -> None:
        """Both ends joined: say GO and pass on anything that came early."""
        self._uncount()
        if self._timer is not None:
            self._timer.cancel()
        assert self.transport is not None
        self.transport.write(GO)
        for chunk in self._early:
            self._forward(chunk)
        self._early.clear()

    def _forward(self, data: bytes) -> None:
        circuit, partner = self.circuit, self.partner
        assert circuit is not None
        assert partner is not None
        assert partner.transport is not None
        circuit.carried += len(data)
        if circuit.limits.total and circuit.carried > circuit.limits.total:
            circuit.close("over its byte quota")
            return
        partner.transport.write(data)
        if circuit.limits.rate:
            # Ahead of the rate: stop reading until the bytes carried fit it again.
            ahead = circuit.carried / circuit.limits.rate - (time.monotonic() - circuit.started)
            if ahead > 0.05:
                self._pause("rate")
                asyncio.get_running_loop().call_later(ahead, self._resume, "rate")

    # Flow control: the partner's send buffer is full, so this side stops reading.
    def pause_writing(self) -> None:
        """Our send buffer is full: the partner stops reading."""
        if self.partner is not None:
            self.partner._pause("partner")

    def resume_writing(self) -> None:
        """Our send buffer drained: the partner reads again."""
        if self.partner is not None:
            self.partner._resume("partner")

    def _pause(self, why: str) -> None:
        if not self._paused_by and self.transport is not None:
            self.transport.pause_reading()
        self._paused_by.add(why)

    def _resume(self, why: str) -> None:
        self._paused_by.discard(why)
        if not self._paused_by and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        """One end finished: the circuit ends (what it sent last still reaches the other)."""
        if self.circuit is not None:
            self.circuit.close("an end closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """One end went: the circuit ends."""
        self._uncount()
        if self._timer is not None:
            self._timer.cancel()
        if self.circuit is not None:
            self.circuit.close("an end closed")

    def finish(self) -> None:
        """Close after what is queued for this end was sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop this connection now."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.joining.count -= 1

    def _too_late(self) -> None:
        if self.partner is None:
            if self.circuit is not None:
                self.circuit.close("the other end never joined")
            else:
                self.abort()
