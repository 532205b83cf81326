"""The record layer of an open connection, sans-IO: frames in and out of Noise transport records.

On the wire a record is u16 length | Noise ciphertext of at most RECORD_PLAINTEXT bytes. A
frame is cut into records as if it were joined — full records, the last one shorter — which is
what the receiver demands, but each record is sealed from the header and the payload where they
lie: a block is never copied to be framed. The receiver opens every whole record straight from
the piece a socket read returned (a block's payload decrypted in place into its buffer) and
copies only the record cut by the piece's end.
"""

import struct
from collections.abc import Callable

from peercloud.wire import frames
from peercloud.wire import messages as m
from peercloud.wire.noise import MAX_MESSAGE, TAGLEN, CipherState

LENGTH = struct.Struct(">H")
RECORD_PLAINTEXT = MAX_MESSAGE - TAGLEN

# Hands on one frame (message and payload); False once the connection closed: read no further.
Deliver = Callable[[m.Message, bytes | memoryview], bool]


def seal_frame(send: CipherState, out: list[bytes | memoryview], msg: m.Message, payload: bytes | memoryview) -> None:
    """Append the records of one frame to `out`."""
    head, header, body = frames.encode_frame(msg, payload)
    prefix, view, size = b"".join((head, header)), memoryview(body), RECORD_PLAINTEXT
    whole = len(prefix) - len(prefix) % size
    for start in range(0, whole, size):
        seal(send, out, prefix[start : start + size])
    cut = size - (len(prefix) - whole)
    if len(prefix) > whole or view:  # the one record where the header ends and the payload starts
        seal(send, out, b"".join((prefix[whole:], view[:cut])))
    for start in range(cut, len(view), size):
        seal(send, out, view[start : start + size])


def seal(send: CipherState, out: list[bytes | memoryview], plain: bytes | memoryview) -> None:
    """Append one record of `plain` (at most RECORD_PLAINTEXT bytes) to `out`."""
    ct = send.encrypt(b"", plain)
    out.append(LENGTH.pack(len(ct)))
    out.append(ct)


class RecordReader:
    """Opens the records of one connection as they arrive and hands on the frames they carry."""

    def __init__(self, recv: CipherState, decoder: frames.FrameDecoder) -> None:
        self._recv = recv
        self._frames = decoder
        self._cut = bytearray()  # a record begun by the last piece and not yet whole
        self._stopped = False

    def feed(self, data: memoryview, deliver: Deliver) -> None:
        """Bytes that arrived: open the whole records, keep the start of a cut one."""
        pos = 0
        if self._cut:
            pos = self._complete(data, deliver)
            if pos < 0 or self._stopped:
                return
        rest = data[pos:]
        try:
            pos += self._whole(rest, deliver)
        finally:
            rest.release()
        if not self._stopped:
            self._cut += data[pos:]

    def _complete(self, data: memoryview, deliver: Deliver) -> int:
        """Complete the cut record from the start of `data` and open it; returns the bytes of
        `data` used, or -1 when all of it went in and the record is still cut."""
        buf = self._cut
        take = max(0, LENGTH.size - len(buf))
        buf += data[:take]
        if len(buf) < LENGTH.size:
            return -1
        n: int = LENGTH.unpack_from(buf)[0]
        more = min(LENGTH.size + n - len(buf), len(data) - take)
        buf += data[take : take + more]
        if len(buf) < LENGTH.size + n:
            return -1
        self._cut = bytearray()
        view = memoryview(buf)
        try:
            self._whole(view, deliver)
        finally:
            view.release()
        return take + more

    def _whole(self, view: memoryview, deliver: Deliver) -> int:
        """Decrypt and hand on the whole records at the start of `view`; returns bytes used."""
        pos = 0
        while len(view) - pos >= LENGTH.size:
            n: int = LENGTH.unpack_from(view, pos)[0]
            if len(view) - pos < LENGTH.size + n:
                break
            record, size = view[pos + LENGTH.size : pos + LENGTH.size + n], n - TAGLEN
            try:
                room = self._frames.payload_room(size)
                if room is not None:  # inside a block's payload: decrypt in place
                    self._recv.decrypt_into(b"", record, room)
                    room.release()
                    arrived = self._frames.advance(size)
                else:
                    arrived = self._frames.feed(self._recv.decrypt(b"", record))
            finally:
                record.release()
            pos += LENGTH.size + n
            for msg, body in arrived:
                if not deliver(msg, body):
                    self._stopped = True
                    return pos
            # A record is full or ends at a frame boundary (our sender cuts frames so): a
            # frame dribbled in tiny records would cost a record's overhead per byte.
            if self._frames.partial and size < RECORD_PLAINTEXT:
                raise m.ProtocolError("a record ended inside a frame without being full")
        return pos
