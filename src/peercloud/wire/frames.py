"""Frames: how messages travel inside the encrypted channel, and their reassembly.

A frame is:

    u32 body length | u16 header length | msgpack header | raw payload

Only BlockData and Proof carry a payload: block bytes travel raw after the header, never
re-encoded. The decoder reads untrusted bytes: sizes are bounded before anything is buffered.
"""

import struct
from collections.abc import Callable

from peercloud.wire.messages import (
    MAX_HEADER,
    MAX_PAYLOAD,
    BlockData,
    Message,
    Proof,
    ProtocolError,
    decode_header,
    encode_header,
)

MAX_FRAME_BODY = 2 + MAX_HEADER + MAX_PAYLOAD
PREALLOCATE = 2 * 1024 * 1024  # a payload buffer's first size: a default block (1 MiB + tag) fits
_FRAME_HEAD = struct.Struct(">IH")


def encode_frame(msg: Message, payload: bytes | memoryview = b"") -> list[bytes | memoryview]:
    """A frame as a list of buffers (the payload is not copied)."""
    header = encode_header(msg)
    if len(header) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise ValueError("message too large for a frame")
    return [_FRAME_HEAD.pack(2 + len(header) + len(payload), len(header)), header, payload]


class FrameDecoder:
    """Reassembles frames from a byte stream, each byte touched once whatever the pieces' sizes.

    The frame head and header are parsed once, as soon as they are complete, and `accept` is
    asked about the message before its payload is read: it may refuse it (raise ProtocolError)
    or have the payload skipped unbuffered (return False, e.g. the answer to a request we
    cancelled). A payload is then gathered into one growing buffer, or, when it arrives whole
    in one piece, is a view of that piece: a 1 MiB block is copied at most once here.
    """

    def __init__(self, accept: Callable[[Message, int], bool] | None = None) -> None:
        self._accept = accept
        self._head = bytearray()  # frame head, then header, of the frame being read
        self._msg: Message | None = None  # header decoded, payload still arriving
        self._left = 0  # payload bytes still to come
        self._keep = True
        self._payload: bytearray | None = None  # the payload being gathered (see `_room`)
        self._filled = 0

    @property
    def partial(self) -> bool:
        """True while part of a frame has arrived and its end has not."""
        return bool(self._head) or self._msg is not None

    def feed(self, data: bytes | memoryview) -> list[tuple[Message, memoryview]]:
        """Add bytes (which must not change afterwards); return every complete (message, payload)."""
        view = memoryview(data)
        pos, end = 0, len(view)
        out: list[tuple[Message, memoryview]] = []
        while pos < end:
            if self._msg is None:
                pos = self._read_header(view, pos, out)
                continue
            take = min(self._left, end - pos)
            if not self._keep:
                pass  # skipped: never buffered
            elif self._payload is None and take == self._left:
                out.append((self._msg, view[pos : pos + take]))  # whole in this piece: no copy
                self._keep = False  # already delivered
            else:
                room = self._room(take)
                room[:] = view[pos : pos + take]
                room.release()
                self._filled += take
            pos += take
            self._left -= take
            self._complete(out)
        return out

    def payload_room(self, n: int) -> memoryview | None:
        """The next `n` bytes of the payload being gathered, for a caller that writes them there
        directly (decrypts in place), then calls `advance(n)`; None unless a kept payload is
        partly gathered and `n` bytes of it are still to come."""
        if self._payload is None or self._msg is None or not self._keep or not 0 <= n <= self._left:
            return None
        return self._room(n)

    def _room(self, n: int) -> memoryview:
        """A view of the next `n` payload bytes, the buffer grown as needed: sized for the whole
        payload up to PREALLOCATE at once (no copy for a block of that size), doubling beyond,
        so a peer that announces a payload and stalls holds little it did not send."""
        buf, end = self._payload, self._filled + n
        if buf is None or end > len(buf):
            total = self._filled + self._left
            grown = bytearray(min(total, max(end, PREALLOCATE, 2 * len(buf) if buf is not None else 0)))
            if buf is not None:
                grown[: self._filled] = buf[: self._filled]
            self._payload = buf = grown
        return memoryview(buf)[self._filled : end]

    def advance(self, n: int) -> list[tuple[Message, memoryview]]:
        """`n` bytes were written at the start of `payload_room()`: the message, once complete."""
        self._filled += n
        self._left -= n
        out: list[tuple[Message, memoryview]] = []
        self._complete(out)
        return out

    def _complete(self, out: list[tuple[Message, memoryview]]) -> None:
        if self._left == 0 and self._msg is not None:
            if self._keep and self._payload is not None:
                out.append((self._msg, memoryview(self._payload)))
            self._msg, self._payload, self._keep = None, None, True

    def _read_header(self, view: memoryview, pos: int, out: list[tuple[Message, memoryview]]) -> int:
        """Consume frame head and header from `view` at `pos`; returns the new position."""
        head = self._head
        if not head and len(view) - pos >= _FRAME_HEAD.size:
            body_len, header_len = _FRAME_HEAD.unpack_from(view, pos)
            _check_lengths(body_len, header_len)
            if len(view) - pos >= _FRAME_HEAD.size + header_len:  # header in this piece: no copy
                start = pos + _FRAME_HEAD.size
                self._start(decode_header(view[start : start + header_len]), body_len - 2 - header_len, out)
                return int(start + header_len)
        need = _FRAME_HEAD.size - len(head)
        if need <= 0:
            body_len, header_len = _FRAME_HEAD.unpack_from(head)
            need = _FRAME_HEAD.size + header_len - len(head)
        take = min(need, len(view) - pos)
        head += view[pos : pos + take]
        pos += take
        if len(head) < _FRAME_HEAD.size:
            return pos
        body_len, header_len = _FRAME_HEAD.unpack_from(head)
        _check_lengths(body_len, header_len)
        if len(head) == _FRAME_HEAD.size + header_len:
            msg = decode_header(bytes(head[_FRAME_HEAD.size :]))
            self._head = bytearray()
            self._start(msg, body_len - 2 - header_len, out)
        return pos

    def _start(self, msg: Message, payload_len: int, out: list[tuple[Message, memoryview]]) -> None:
        if payload_len and not isinstance(msg, BlockData | Proof):
            raise ProtocolError(f"{msg.TYPE} must not carry a payload")
        keep = self._accept(msg, payload_len) if self._accept is not None else True
        if payload_len == 0:
            if keep:
                out.append((msg, memoryview(b"")))
            return
        self._msg, self._left, self._keep, self._payload, self._filled = msg, payload_len, keep, None, 0


def _check_lengths(body_len: int, header_len: int) -> None:
    if body_len > MAX_FRAME_BODY:
        raise ProtocolError(f"frame of {body_len} bytes exceeds the limit of {MAX_FRAME_BODY}")
    if header_len > MAX_HEADER or header_len + 2 > body_len or body_len - 2 - header_len > MAX_PAYLOAD:
        raise ProtocolError("frame header or payload length invalid")
