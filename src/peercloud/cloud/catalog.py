"""The catalog's rules: which entries are possible, and a digest two members compare to sync.

Members keep the same catalog. Rather than re-sending 100,000 entries on every link, each side
sends a digest: per bucket of object IDs (the ID's first byte, 256 buckets), how many entries
it holds and the XOR of their hashes. Buckets that differ are pulled, page by page, from one
peer at a time; identical catalogs cost one 3 KiB message. Pure functions, no I/O.
"""

import struct

import blake3

from peercloud.content.manifest import MAX_MANIFEST_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE
from peercloud.store.index import CatalogEntry

BUCKETS = 256
MAX_BLOCKS = MAX_MANIFEST_SIZE // 32  # the most blocks a manifest can list
_SHAPE = struct.Struct(">IHHQ")
_BUCKET = struct.Struct(">IQ")
DIGEST_SIZE = BUCKETS * _BUCKET.size


def shape_problem(total: int, k: int, n: int, size: int) -> str | None:
    """Why an entry's shape is impossible (no manifest could have it), or None."""
    if not (1 <= k <= n <= 256 and total % n == 0 and 0 < total <= MAX_BLOCKS):
        return "coding or block count impossible"
    segments = total // n
    if not (segments - 1) * MIN_SEGMENT_SIZE < size <= segments * MAX_SEGMENT_SIZE:
        return "size does not fit its segments"
    return None


def entry_hash(e: CatalogEntry) -> int:
    """64 bits standing for one entry in the digest (object, class and shape; not the time)."""
    data = e.object_id + e.storage_class.encode() + _SHAPE.pack(e.total_blocks, e.k, e.n, e.size)
    return int.from_bytes(blake3.blake3(data).digest()[:8], "big")


class Digest:
    """Per-bucket counts and hash XORs of a catalog, kept up to date as entries arrive."""

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.hashes = [0] * BUCKETS

    def add(self, e: CatalogEntry) -> None:
        """Count a new entry."""
        b = e.object_id[0]
        self.counts[b] += 1
        self.hashes[b] ^= entry_hash(e)

    def encode(self) -> bytes:
        """The digest as it travels (3 KiB)."""
        return b"".join(_BUCKET.pack(c, h) for c, h in zip(self.counts, self.hashes, strict=True))

    def differs(self, other: bytes) -> bytes:
        """Bitmap (32 bytes) of the buckets where a peer's encoded digest differs from ours."""
        if len(other) != DIGEST_SIZE:
            raise ValueError("catalog digest has the wrong size")
        out = bytearray(BUCKETS // 8)
        for b in range(BUCKETS):
            if _BUCKET.unpack_from(other, b * _BUCKET.size) != (self.counts[b], self.hashes[b]):
                out[b // 8] |= 0x80 >> (b % 8)
        return bytes(out)


def in_buckets(object_id: bytes, buckets: bytes) -> bool:
    """Whether an object ID falls in a bucket bitmap."""
    b = object_id[0]
    return bool(buckets[b // 8] & (0x80 >> (b % 8)))
