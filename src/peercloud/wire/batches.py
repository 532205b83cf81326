"""Packed entries for bulk messages (`haves`): many objects per frame, bounded.

A library of 100,000 objects must cross a link in dozens of messages, not 100,000, and parse
fast: entries are fixed binary layouts concatenated in one msgpack `bin` field (the header's
64 KiB bound caps a batch). Every decoder here reads untrusted bytes: lengths are checked
exactly, trailing bytes and malformed names are refused with ProtocolError.
"""

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from peercloud.wire.messages import ProtocolError

BATCH_BYTES = 60_000  # packed bytes per message: leaves room for the header's framing
MAX_BATCH_BITMAP = 1024  # longer bitmaps (objects of more than 8192 blocks) travel as `have`
_HAVE = struct.Struct(">32sBH")  # object, flags (bit 0: pinned, bit 1: provisional), bitmap length


class HaveEntry(NamedTuple):
    """One object's HAVE bitmap in a batch."""

    object_id: bytes
    bitmap: bytes
    pinned: bool
    provisional: bool = False


def _batched(items: Iterable[bytes]) -> Iterator[bytes]:
    """Concatenate packed entries into batches of at most BATCH_BYTES each."""
    batch = bytearray()
    for item in items:
        if len(batch) + len(item) > BATCH_BYTES:
            yield bytes(batch)
            batch = bytearray()
        batch += item
    if batch:
        yield bytes(batch)


def _have(e: HaveEntry) -> bytes:
    if len(e.bitmap) > MAX_BATCH_BITMAP:
        raise ValueError("bitmap too long for a batch: send it as `have`")
    return _HAVE.pack(e.object_id, e.pinned | e.provisional << 1, len(e.bitmap)) + e.bitmap


def pack_haves(entries: Iterable[HaveEntry]) -> Iterator[bytes]:
    """Cut entries into packed batches of at most BATCH_BYTES each."""
    return _batched(_have(e) for e in entries)


def unpack_haves(data: bytes) -> list[HaveEntry]:
    """Parse a `haves` batch from an untrusted peer."""
    out, pos, view = [], 0, memoryview(data)
    while pos < len(view):
        if len(view) - pos < _HAVE.size:
            raise ProtocolError("haves: truncated entry")
        object_id, flags, length = _HAVE.unpack_from(view, pos)
        pos += _HAVE.size
        if flags & ~3 or length > MAX_BATCH_BITMAP or len(view) - pos < length:
            raise ProtocolError("haves: malformed entry")
        out.append(HaveEntry(object_id, bytes(view[pos : pos + length]), bool(flags & 1), bool(flags & 2)))
        pos += length
    return out
