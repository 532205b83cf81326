"""The asyncio driver for PeerConnection: sockets in, events out, and awaitable requests.

Receiving uses an `asyncio.BufferedProtocol` reading into one preallocated buffer per
connection (DESIGN.md §9: StreamReader is the bottleneck at high rates). All protocol decisions
stay in `peercloud.wire.connection`; this module only moves bytes, timers and futures.
"""

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

from peercloud.errors import PeercloudError, UsageError
from peercloud.identity import Identity, PeerId
from peercloud.net.meter import Meter
from peercloud.wire import connection as c
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
RECV_START = 16 * 1024  # receive buffer of a new connection: a handshake needs less than 1 KiB
RECV_MAX = 1024 * 1024  # grown (by doubling, once open) while reads keep filling it
MAX_WRITE_BUFFER = 16 * 1024 * 1024  # queued output beyond which we stop reading the peer
MAX_HANDSHAKING = 64  # inbound connections still in their handshake, in total
MAX_HANDSHAKING_PER_IP = 8
DIAL_TIMEOUT = 10.0

RequestHandler = Callable[["PeerLink", m.Message], Awaitable[None]]
NoticeHandler = Callable[["PeerLink", m.Message], None]


class PeerError(PeercloudError):
    """A peer could not be reached, refused us, or failed a request (`code` is its error code)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Address:
    """host:port of a peer's listener."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Address":
        """Read HOST:PORT (IPv6 as [addr]:port)."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise PeerError(f"not an address: {text!r} (expected HOST:PORT)")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_peer(text: str) -> tuple[PeerId, Address]:
    """PEERID@HOST:PORT, as users paste it."""
    peer, sep, address = text.strip().partition("@")
    if not sep:
        raise UsageError(f"expected PEERID@HOST:PORT, got {text!r}")
    return PeerId.parse(peer), Address.parse(address)


class HandshakeGate:
    """Bounds inbound connections that have not proved a peer ID yet, in total and per IP.

    Before its handshake completes a connection costs memory and a timer but proves nothing,
    so a flood of idle sockets must be refused at the door, not buffered.
    """

    def __init__(self, total: int = MAX_HANDSHAKING, per_ip: int = MAX_HANDSHAKING_PER_IP) -> None:
        self.total, self.per_ip = total, per_ip
        self._by_ip: dict[str, int] = {}
        self.refused = 0

    def admit(self, ip: str) -> bool:
        """Count a new connection from `ip`, or refuse it (False) when a bound is reached."""
        if sum(self._by_ip.values()) >= self.total or self._by_ip.get(ip, 0) >= self.per_ip:
            self.refused += 1
            return False
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        return True

    def release(self, ip: str) -> None:
        """The connection from `ip` finished its handshake or closed."""
        left = self._by_ip.get(ip, 0) - 1
        if left > 0:
            self._by_ip[ip] = left
        else:
            self._by_ip.pop(ip, None)


class PeerLink(asyncio.BufferedProtocol):
    """One connection to a peer; awaitable `established`, `get_block`, `ping`."""

    def __init__(
        self,
        conn: c.PeerConnection,
        on_request: RequestHandler,
        on_notice: NoticeHandler | None = None,
        on_closed: Callable[["PeerLink"], None] | None = None,
        gate: HandshakeGate | None = None,
    ) -> None:
        self.conn = conn
        self._loop = asyncio.get_running_loop()
        self._view = memoryview(bytearray(RECV_START))
        self._gate = gate
        self._gated_ip: str | None = None
        self._stalled = False  # the peer does not read what we send: we stop reading it
        self._busy = False  # we are still digesting what it sent: we stop reading it
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[c.Response]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # the deadline `_timer` is armed for
        self._on_request = on_request
        self._on_notice = on_notice
        self._on_closed = on_closed
        self._writable = asyncio.Event()
        self._writable.set()
        self._handlers: dict[int, asyncio.Task[None]] = {}
        self.established: asyncio.Future[c.Established] = self._loop.create_future()
        self.closed: asyncio.Future[c.Closed] = self._loop.create_future()
        self.remote: str = "?"
        self.rtt: float | None = None
        # The kind of path the dialing side chose (it says so in its hello): lan, direct,
        # mapped, punched or relayed; `via` names the relay of a relayed link.
        self.path = conn.hello.path if conn.initiator else ""
        self.via: PeerId | None = None
        self.since: float | None = None  # wall clock at the handshake's end
        self.meter = Meter()  # sampled once a second by whoever keeps the link

    @property
    def peer_id(self) -> PeerId | None:
        """The authenticated peer, once established."""
        return self.conn.peer_id

    # -- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake (the initiator's first message is already queued)."""
        transport = cast(asyncio.Transport, transport)  # a stream's (uvloop's is not a subclass)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self._gate is not None:
            ip = peer[0] if peer else "?"
            if not self._gate.admit(ip):
                log.info("refusing connection from %s: too many handshakes in progress", self.remote)
                transport.abort()
                return
            self._gated_ip = ip
            self.established.add_done_callback(lambda _: self._ungate())
        self._pump()

    def _ungate(self) -> None:
        if self._gate is not None and self._gated_ip is not None:
            self._gate.release(self._gated_ip)
            self._gated_ip = None

    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand asyncio our receive buffer (small until the peer is authenticated)."""
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        """Feed what arrived to the state machine; a read that filled the buffer grows it."""
        self.conn.receive_data(self._view[:nbytes], self._loop.time())
        if nbytes == len(self._view) < RECV_MAX and self.conn.state is c.State.OPEN:
            self._view = memoryview(bytearray(2 * nbytes))
        self._pump()

    def eof_received(self) -> bool:
        """The peer closed its side: so do we."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone."""
        self.conn.connection_lost(f"connection lost: {exc}" if exc else "connection closed by peer")
        self._pump()

    def pause_writing(self) -> None:
        """The socket's send buffer is full: hold responses."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """The send buffer drained: answer again, and read again if a stalled reader made us stop."""
        self._writable.set()
        if self._stalled:
            self._stalled = False
            self._update_reading()

    def hold_reading(self, busy: bool) -> None:
        """Stop (True) or resume (False) reading the peer while what it sent is being processed."""
        if busy != self._busy:
            self._busy = busy
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._stalled or self._busy:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- API

    async def get_block(self, block_id: bytes, timeout: float | None = None) -> bytes | memoryview:
        """Fetch one block's bytes (unverified: the caller checks them against the ID)."""
        return (await self.call(m.GetBlock(self.conn.new_id(), block_id), timeout)).payload

    async def call(self, msg: m.Request, timeout: float | None = None) -> c.Response:
        """Send a request (its id from `next_id`); an Error answer raises PeerError with its code."""
        response = await self._request(msg, timeout)
        answer = response.message
        if isinstance(answer, m.Error):
            raise PeerError(f"peer {self._name()} answered {answer.code}: {answer.message}", answer.code)
        return response

    def next_id(self) -> int:
        """A request id for `call`."""
        return self.conn.new_id()

    async def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter()
        await self._request(m.Ping(self.conn.new_id()), timeout)
        self.rtt = time.perf_counter() - start
        return self.rtt

    def respond(self, request_id: int, msg: m.Message, payload: bytes | memoryview = b"") -> None:
        """Answer a request at once (small answers; handlers use `answer`)."""
        self.conn.respond(request_id, msg, payload)
        self._pump()

    async def answer(self, request_id: int, msg: m.Message, payload: bytes | memoryview = b"") -> None:
        """Answer a request once the socket takes more: a peer that stops reading stops getting."""
        await self.writable()
        self.respond(request_id, msg, payload)

    def notify(self, msg: m.Notice) -> None:
        """Send a one-way message."""
        self.conn.notify(msg)
        self._pump()

    async def writable(self) -> None:
        """Wait until the socket accepts more data (backpressure for servers)."""
        await self._writable.wait()

    def state_line(self) -> str:
        """What the link is doing, for a log line when it looks dead (which side stopped what)."""
        t = self._transport
        queued = t.get_write_buffer_size() if t is not None else 0
        reading = t.is_reading() if t is not None else False
        return (
            f"in {self.conn.bytes_in} B, out {self.conn.bytes_out} B, {queued} B queued, "
            f"reading {reading} (stalled {self._stalled}, busy {self._busy}), "
            f"writable {self._writable.is_set()}, {len(self._pending)} asked, {len(self._handlers)} answering"
        )

    def idle(self) -> bool:
        """True when nothing is asked or being answered here: closing it now loses no request."""
        return not self._pending and not self._handlers

    def close(self, reason: str = "bye") -> None:
        """End the connection politely."""
        self.conn.close(reason)
        self._pump()

    # -- internals

    def _name(self) -> str:
        return self.peer_id.short() if self.peer_id else self.remote

    async def _request(self, msg: m.Request, timeout: float | None) -> c.Response:
        if self.conn.state is not c.State.OPEN:
            raise PeerError(f"connection to {self._name()} is {self.conn.state.value}")
        fut: asyncio.Future[c.Response] = self._loop.create_future()
        self._pending[msg.id] = fut
        self.conn.request(msg, self._loop.time(), timeout)
        self._pump()
        try:
            return await fut
        except asyncio.CancelledError:
            self.conn.cancel(msg.id)
            self._pump()
            raise
        finally:
            self._pending.pop(msg.id, None)

    def _pump(self) -> None:
        """Flush outgoing bytes, deliver events, re-arm the timer."""
        data = self.conn.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.writelines(data)
            # Answers wait for `writable`, so only a peer that stops reading while it keeps
            # sending gets here: stop reading it until it drains what it was sent.
            if not self._stalled and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self._stalled = True
                log.info("%s does not read what it asked for: not reading it until it does", self._name())
                self._update_reading()
        while (event := self.conn.next_event()) is not None:
            self._deliver(event)
        # Re-armed only for an earlier deadline, not per block: a timer armed for an earlier one
        # fires, finds nothing due and is armed again for what is left.
        deadline = self.conn.next_timer() if self.conn.state is not c.State.CLOSED else None
        if deadline is None or self._timer_at is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer) if deadline is not None else None
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self.conn.handle_timer(self._loop.time())
        self._pump()

    def _deliver(self, event: c.Event) -> None:
        if isinstance(event, c.Established):
            self.since = time.time()
            if not self.conn.initiator:
                self.path = event.hello.path or "direct"
            if not self.established.done():
                self.established.set_result(event)
        elif isinstance(event, c.Response):
            fut = self._pending.get(event.request_id)
            if fut is not None and not fut.done():
                fut.set_result(event)
        elif isinstance(event, c.Timeout):
            fut = self._pending.get(event.request_id)
            if fut is not None and not fut.done():
                fut.set_exception(PeerError(f"peer {self._name()} did not answer in time"))
        elif isinstance(event, c.Request):
            rid = getattr(event.message, "id", 0)
            task = self._loop.create_task(self._handle(event.message))
            self._handlers[rid] = task
            # Runs even for a handler cancelled before it started (a Cancel right behind its request).
            task.add_done_callback(partial(self._finished, rid))
        elif isinstance(event, c.Notice):
            if isinstance(event.message, m.Cancel):
                handler = self._handlers.get(event.message.id)
                if handler is not None:
                    handler.cancel()
            elif self._on_notice is not None:
                self._on_notice(self, event.message)
        elif isinstance(event, c.Closed):
            self._on_close(event)

    async def _handle(self, msg: m.Message) -> None:
        rid = getattr(msg, "id", 0)
        try:
            await self._on_request(self, msg)
        except asyncio.CancelledError:
            pass  # the peer cancelled, or the link closed
        except Exception as e:
            log.warning("request handler failed for %s from %s: %s", msg.TYPE, self._name(), e)
            await self.answer(rid, m.Error(rid, "other", "internal error"))

    def _finished(self, rid: int, _: object) -> None:
        self._handlers.pop(rid, None)
        self.conn.finish_request(rid)

    def _on_close(self, event: c.Closed) -> None:
        level = logging.WARNING if event.error else logging.INFO
        log.log(level, "connection %s closed: %s", self._name(), event.reason)
        err = PeerError(f"connection to {self._name()} closed: {event.reason}")
        if not self.established.done():
            self.established.set_exception(err)
            self.established.exception()  # mark retrieved: callers may never await it
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(event)
        self._writable.set()  # waiting answers give up: respond is a no-op on a closed link
        if self._transport is not None:
            self._transport.close()
        for task in list(self._handlers.values()):
            task.cancel()
        if self._on_closed is not None:
            self._on_closed(self)


async def dial(
    address: Address,
    identity: Identity,
    hello: m.Hello,
    on_request: RequestHandler,
    expected_peer: PeerId | None = None,
    on_notice: NoticeHandler | None = None,
    on_closed: Callable[[PeerLink], None] | None = None,
    timeout: float = DIAL_TIMEOUT,
    sock: socket.socket | None = None,
    initiator: bool = True,
) -> PeerLink:
    """Connect to a peer and complete the authenticated handshake.

    With `sock`, the handshake runs over that connected socket instead (a relay circuit, a
    punched connection), as the Noise initiator or, with `initiator=False`, the responder.
    """
    loop = asyncio.get_running_loop()

    def factory() -> PeerLink:
        conn = c.PeerConnection(initiator, identity, hello, loop.time(), expected_peer=expected_peer)
        return PeerLink(conn, on_request, on_notice, on_closed)

    link: PeerLink | None = None
    try:
        async with asyncio.timeout(timeout):
            if sock is not None:
                _, link = await loop.create_connection(factory, sock=sock)
            else:
                _, link = await loop.create_connection(factory, address.host, address.port)
            await link.established
    except BaseException as e:
        if link is not None:
            link.close("dial abandoned")
        if isinstance(e, TimeoutError):
            raise PeerError(f"peer at {address} did not complete the handshake within {timeout:.0f} s") from None
        if isinstance(e, OSError):
            raise PeerError(f"cannot connect to {address}: {e.strerror or e}") from None
        raise
    return link


async def listen(
    host: str,
    port: int,
    identity: Identity,
    hello: m.Hello,
    on_request: RequestHandler,
    on_established: Callable[[PeerLink], None] | None = None,
    on_notice: NoticeHandler | None = None,
    on_closed: Callable[[PeerLink], None] | None = None,
    gate: HandshakeGate | None = None,
) -> asyncio.Server:
    """Accept peer connections; each gets its own state machine (handshakes bounded by `gate`)."""
    loop = asyncio.get_running_loop()
    gate = gate or HandshakeGate()

    def factory() -> PeerLink:
        conn = c.PeerConnection(False, identity, hello, loop.time())
        link = PeerLink(conn, on_request, on_notice, on_closed, gate)
        if on_established is not None:
            link.established.add_done_callback(
                lambda f: on_established(link) if not f.cancelled() and f.exception() is None else None
            )
        return link

    # reuse_port: outgoing connections leave from this port too (connect/sockets.py)
    return await loop.create_server(factory, host, port, reuse_address=True, reuse_port=True)
