"""One peer connection as a sans-IO state machine: Noise XX handshake, identity, frames, requests.

Feed it the bytes that arrived (`receive_data`), send what `data_to_send` returns, and act on
`next_event()`. Time comes in as arguments, never from a clock, so tests drive it without
sockets or sleeps. The asyncio driver in `peercloud.net` is a thin adapter around it.

Layers on the byte stream:
- handshake: u16 length | Noise message (three of them, XX pattern);
- then transport records: u16 length | Noise ciphertext (at most 65535 bytes; `records.py`);
- the decrypted records form a stream of frames (see messages.py).

The responder's second handshake message and the initiator's third carry a payload binding the
connection to a peer ID: the Ed25519 identity key, its signature over this connection's Noise
static key, and the sender's Hello.
"""

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from peercloud.identity import Identity, PeerId
from peercloud.wire import frames, records
from peercloud.wire import messages as m
from peercloud.wire.noise import CipherState, Handshake, NoiseError
from peercloud.wire.records import LENGTH as _LEN

PROLOGUE = b"peercloud noise v1"
_SIG_CONTEXT = b"peercloud noise static key v1:"


@dataclass(frozen=True)
class Limits:
    """What an untrusted peer may make us hold or do."""

    max_inflight: int = 256  # requests from the peer not yet answered
    max_messages_per_second: int = 20000
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0


class State(Enum):
    """Where the connection is in its life."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Event:
    """Base of what the connection reports."""


@dataclass(frozen=True)
class Established(Event):
    """Handshake done: the peer proved `peer_id`, and said `hello`."""

    peer_id: PeerId
    hello: m.Hello


@dataclass(frozen=True)
class Request(Event):
    """The peer asks something (GetBlock, Ping) that we must answer with `respond`."""

    message: m.Message


@dataclass(frozen=True)
class Response(Event):
    """The answer to one of our requests (BlockData with payload, Pong, Error)."""

    request_id: int
    message: m.Message
    payload: bytes | memoryview = b""


@dataclass(frozen=True)
class Notice(Event):
    """A one-way message from the peer (Have, Cancel)."""

    message: m.Message


@dataclass(frozen=True)
class Timeout(Event):
    """Our request got no answer in time."""

    request_id: int


@dataclass(frozen=True)
class Closed(Event):
    """The connection is over; `error` tells whether it ended badly."""

    reason: str
    error: bool


@dataclass
class _Outstanding:
    message: m.Message
    deadline: float


@dataclass
class PeerConnection:
    """State machine for one connection; create one per TCP connection."""

    initiator: bool
    identity: Identity
    hello: m.Hello
    now: float
    expected_peer: PeerId | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.state = State.HANDSHAKE
        self.peer_id: PeerId | None = None
        self.peer_hello: m.Hello | None = None
        self._static = X25519PrivateKey.generate()
        self._hs = Handshake(self.initiator, self._static, PROLOGUE)
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._reader: records.RecordReader | None = None
        self._inbuf = bytearray()  # handshake messages, until the connection is open
        self._out: list[bytes | memoryview] = []
        self._events: deque[Event] = deque()
        self._frames = frames.FrameDecoder(self._accept)
        self._next_id = 1
        self._outstanding: dict[int, _Outstanding] = {}
        self._inflight_from_peer: set[int] = set()
        self._cancelled_by_peer: set[int] = set()
        self._deadline = self.now + self.limits.handshake_timeout
        self._rate_window = (self.now, 0)
        self.bytes_in = 0
        self.bytes_out = 0
        if self.initiator:
            self._send_handshake(self._hs.write_message())

    # -- feeding the machine

    def receive_data(self, data: bytes | memoryview, now: float) -> None:
        """Bytes arrived from the network."""
        if self.state is State.CLOSED:
            return
        self.now = now
        self.bytes_in += len(data)
        try:
            if self.state is State.HANDSHAKE:
                self._inbuf += data
                if self._handshake() and self._inbuf:  # records right behind the handshake
                    early, self._inbuf = self._inbuf, bytearray()
                    self._read(memoryview(early))
            elif self.state is State.OPEN:
                self._read(memoryview(data))
        except (NoiseError, m.ProtocolError) as e:
            self._fail(str(e))
        except Exception as e:  # a decoder bug must cost one connection, not the daemon
            self._fail(f"malformed input ({type(e).__name__})")

    def connection_lost(self, reason: str = "connection closed by peer") -> None:
        """The transport ended (EOF, reset)."""
        if self.state is not State.CLOSED:
            self._finish(reason, error=self.state is State.HANDSHAKE)

    def handle_timer(self, now: float) -> None:
        """Expire the handshake and requests whose time is up."""
        self.now = now
        if self.state is State.HANDSHAKE and now >= self._deadline:
            self._fail("handshake timed out")
            return
        for rid, out in list(self._outstanding.items()):
            if now >= out.deadline:
                del self._outstanding[rid]
                if self.state is State.OPEN:
                    self._send_frame(m.Cancel(rid))  # free the peer's slot too
                self._events.append(Timeout(rid))

    def next_timer(self) -> float | None:
        """When `handle_timer` should next be called, or None."""
        if self.state is State.HANDSHAKE:
            return self._deadline
        if self._outstanding:
            return min(o.deadline for o in self._outstanding.values())
        return None

    def data_to_send(self) -> list[bytes | memoryview]:
        """Buffers to write to the network, in order (drains the queue)."""
        out, self._out = self._out, []
        for b in out:
            self.bytes_out += len(b)
        return out

    def next_event(self) -> Event | None:
        """The next event, or None when there is nothing more for now."""
        return self._events.popleft() if self._events else None

    # -- sending

    def request(self, msg: m.Request, now: float, timeout: float | None = None) -> int:
        """Send a request at time `now`; its answer arrives as Response(id) or Timeout(id).

        The deadline counts from `now`, not from the last byte received: on a link quiet for
        longer than the timeout that would be a deadline already past.
        """
        self._require_open()
        self.now = max(self.now, now)
        deadline = self.now + (timeout if timeout is not None else self.limits.request_timeout)
        self._outstanding[msg.id] = _Outstanding(msg, deadline)
        self._send_frame(msg)
        return msg.id

    def new_id(self) -> int:
        """A fresh request ID for this connection."""
        rid = self._next_id
        self._next_id += 1
        return rid

    def cancel(self, request_id: int) -> None:
        """Withdraw one of our requests; a late answer is ignored."""
        if self._outstanding.pop(request_id, None) is not None and self.state is State.OPEN:
            self._send_frame(m.Cancel(request_id))

    def respond(self, request_id: int, msg: m.Message, payload: bytes | memoryview = b"") -> None:
        """Answer a Request event (unless the peer cancelled it meanwhile)."""
        if request_id not in self._inflight_from_peer or self.state is not State.OPEN:
            return
        cancelled = request_id in self._cancelled_by_peer
        self.finish_request(request_id)
        if not cancelled:
            self._send_frame(msg, payload)

    def finish_request(self, request_id: int) -> None:
        """The handler of a peer's request is done (answered or not): its slot is free again.

        A cancelled request keeps its slot until its handler finishes, so cancelling cannot be
        used to run more than `max_inflight` handlers at once.
        """
        self._inflight_from_peer.discard(request_id)
        self._cancelled_by_peer.discard(request_id)

    def notify(self, msg: m.Notice) -> None:
        """Send a one-way message."""
        self._require_open()
        self._send_frame(msg)

    def close(self, reason: str = "bye") -> None:
        """Say goodbye and end the connection."""
        if self.state is State.OPEN:
            self._send_frame(m.Bye(reason))
        if self.state is not State.CLOSED:
            self._finish(reason, error=False)

    @property
    def outstanding(self) -> int:
        """Our requests awaiting an answer."""
        return len(self._outstanding)

    # -- internals

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise RuntimeError(f"connection is {self.state.value}, not open")

    def _fail(self, reason: str) -> None:
        if self._send is not None:  # keys exist: tell the peer why, encrypted
            code = "version" if "version" in reason else "bad_request"
            self._send_frame(m.Error(0, code, reason[:200]))
        self._finish(reason, error=True)

    def _finish(self, reason: str, error: bool) -> None:
        self.state = State.CLOSED
        self._outstanding.clear()
        self._inbuf = bytearray()  # rebind: `_complete_record` may still hold a view of the old one
        self._events.append(Closed(reason, error))

    def _send_handshake(self, msg: bytes) -> None:
        self._out.append(_LEN.pack(len(msg)) + msg)

    def _send_frame(self, msg: m.Message, payload: bytes | memoryview = b"") -> None:
        assert self._send is not None
        records.seal_frame(self._send, self._out, msg, payload)

    def _identity_payload(self) -> bytes:
        static_pub = self._static.public_key().public_bytes_raw()
        body = {
            "key": self.identity.peer_id.public_key,
            "sig": self.identity.sign(_SIG_CONTEXT + static_pub),
            "hello": m.encode_header(self.hello),
        }
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    def _verify_identity(self, payload: bytes) -> None:
        try:
            body = msgpack.unpackb(payload, raw=False, max_bin_len=m.MAX_HEADER, max_str_len=64, max_map_len=8)
        except Exception:
            raise m.ProtocolError("handshake payload is not valid msgpack") from None
        if not isinstance(body, dict) or not all(isinstance(body.get(k), bytes) for k in ("key", "sig", "hello")):
            raise m.ProtocolError("handshake payload lacks identity")
        if len(body["key"]) != 32 or self._hs.remote_static is None:
            raise m.ProtocolError("handshake identity key malformed")
        peer = PeerId(body["key"])
        if not peer.verify(body["sig"], _SIG_CONTEXT + self._hs.remote_static):
            raise m.ProtocolError("peer's identity signature does not cover this connection's key")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise m.ProtocolError(f"dialed {self.expected_peer} but reached {peer}: wrong key at that address")
        hello = m.decode_header(body["hello"])
        if not isinstance(hello, m.Hello):
            raise m.ProtocolError("handshake payload carries no hello")
        if hello.version != m.PROTOCOL_VERSION:
            raise m.ProtocolError(
                f"peer speaks protocol version {hello.version}; this peercloud speaks {m.PROTOCOL_VERSION}"
            )
        self.peer_id, self.peer_hello = peer, hello

    def _records(self) -> list[bytes]:
        out = []
        while len(self._inbuf) >= 2:
            (n,) = _LEN.unpack_from(self._inbuf)
            if len(self._inbuf) < 2 + n:
                break
            out.append(bytes(self._inbuf[2 : 2 + n]))
            del self._inbuf[: 2 + n]
            if self.state is State.HANDSHAKE:
                break  # the next record may need the keys this one yields
        return out

    def _handshake(self) -> bool:
        """Run the handshake on what arrived; True once it opened the connection."""
        while self.state is State.HANDSHAKE:
            records = self._records()
            if not records:
                return False
            payload = self._hs.read_message(records[0])
            if not self.initiator and not self._hs.complete:  # got msg 1: answer with msg 2
                if payload:
                    raise m.ProtocolError("unexpected payload in the first handshake message")
                self._send_handshake(self._hs.write_message(self._identity_payload()))
            elif self.initiator:  # got msg 2: verify the responder, send msg 3
                self._verify_identity(payload)
                self._send_handshake(self._hs.write_message(self._identity_payload()))
                self._open()
            else:  # got msg 3: keys first, so a refusal can be sent encrypted
                self._send, self._recv = self._hs.split()
                self._verify_identity(payload)
                self._open()
        return self.state is State.OPEN

    def _read(self, data: memoryview) -> None:
        assert self._reader is not None
        self._reader.feed(data, self._deliver)

    def _deliver(self, msg: m.Message, payload: bytes | memoryview) -> bool:
        self._dispatch(msg, payload)
        return self.state is State.OPEN

    def _open(self) -> None:
        if self._send is None:
            self._send, self._recv = self._hs.split()
        assert self._recv is not None
        self._reader = records.RecordReader(self._recv, self._frames)
        self.state = State.OPEN
        assert self.peer_id is not None
        assert self.peer_hello is not None
        self._events.append(Established(self.peer_id, self.peer_hello))

    def _rate_check(self) -> None:
        start, count = self._rate_window
        if self.now - start >= 1.0:
            start, count = self.now, 0
        count += 1
        self._rate_window = (start, count)
        if count > self.limits.max_messages_per_second:
            raise m.ProtocolError("peer exceeded the message rate limit")

    def _accept(self, msg: m.Message, payload_len: int) -> bool:
        """Judge a frame once its header is in, before its payload: False skips the payload."""
        self._rate_check()
        if not payload_len:
            return True
        assert isinstance(msg, m.BlockData | m.Proof)
        out = self._outstanding.get(msg.id)
        if out is None:
            return False  # the answer to a request we cancelled or gave up on: never buffered
        if not isinstance(out.message, m.GetBlock | m.Audit) or out.message.block != msg.block:
            raise m.ProtocolError("peer answered with a block that was not asked for")
        return True

    def _dispatch(self, msg: m.Message, payload: bytes | memoryview) -> None:
        if isinstance(msg, m.Request):
            if msg.id in self._inflight_from_peer:
                raise m.ProtocolError(f"request id {msg.id} reused while in flight")
            if len(self._inflight_from_peer) >= self.limits.max_inflight:
                self._send_frame(m.Error(msg.id, "busy", "too many requests in flight"))
                return
            self._inflight_from_peer.add(msg.id)
            if isinstance(msg, m.Ping):
                self.respond(msg.id, m.Pong(msg.id))
            else:
                self._events.append(Request(msg))
        elif isinstance(msg, m.RESPONSES):
            if isinstance(msg, m.Error) and msg.id == 0:
                code = msg.code if msg.code in m.ERROR_CODES else "other"
                self._finish(f"peer reported: {code}: {msg.message[:200]}", error=True)
                return
            out = self._outstanding.pop(msg.id, None)
            if out is None:
                return  # answer to a cancelled or timed-out request
            if not isinstance(msg, (m.Error, *m.REQUESTS[type(out.message)])):
                raise m.ProtocolError(f"peer answered a {out.message.TYPE} with a {msg.TYPE}")
            if isinstance(msg, m.BlockData | m.Proof) and getattr(out.message, "block", None) != msg.block:
                raise m.ProtocolError("peer answered with a block that was not asked for")
            self._events.append(Response(msg.id, msg, payload))
        elif isinstance(msg, m.Cancel):
            if msg.id in self._inflight_from_peer:
                self._cancelled_by_peer.add(msg.id)
                self._events.append(Notice(msg))
        elif isinstance(msg, m.NOTICES):
            self._events.append(Notice(msg))
        elif isinstance(msg, m.Bye):
            self._finish(f"peer closed: {msg.reason}", error=False)
        else:
            raise m.ProtocolError(f"unexpected {msg.TYPE} after the handshake")
