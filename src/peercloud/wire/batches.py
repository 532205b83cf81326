"""Packed entries for bulk messages (`haves`, `catalog_page`): many objects per frame, bounded.

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
_CATALOG = struct.Struct(">32sIHHQB")  # object, total blocks, k, n, size, class name length
MAX_CLASS_NAME = 32


class HaveEntry(NamedTuple):
    """One object's HAVE bitmap in a batch."""

    object_id: bytes
    bitmap: bytes
    pinned: bool
    provisional: bool = False


class CatalogItem(NamedTuple):
    """One catalog entry as it travels: the object, its class and shape."""

    object_id: bytes
    storage_class: str
    total_blocks: int
    k: int
    n: int
    size: int


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


def _item(e: CatalogItem) -> bytes:
    name = e.storage_class.encode()
    if len(name) > MAX_CLASS_NAME:
        raise ValueError("class name too long")
    return _CATALOG.pack(e.object_id, e.total_blocks, e.k, e.n, e.size, len(name)) + name


def pack_catalog(items: Iterable[CatalogItem]) -> Iterator[bytes]:
    """Cut catalog entries into packed batches of at most BATCH_BYTES each."""
    return _batched(_item(e) for e in items)


def unpack_catalog(data: bytes) -> list[CatalogItem]:
    """Parse packed catalog entries from an untrusted peer (shapes are judged by the caller)."""
    out, pos, view = [], 0, memoryview(data)
    while pos < len(view):
        if len(view) - pos < _CATALOG.size:
            raise ProtocolError("catalog: truncated entry")
        object_id, total, k, n, size, length = _CATALOG.unpack_from(view, pos)
        pos += _CATALOG.size
        if length > MAX_CLASS_NAME or len(view) - pos < length:
            raise ProtocolError("catalog: malformed entry")
        try:
            name = bytes(view[pos : pos + length]).decode()
        except UnicodeDecodeError:
            raise ProtocolError("catalog: class name is not UTF-8") from None
        out.append(CatalogItem(object_id, name, total, k, n, size))
        pos += length
    return out
