"""Manifests: an object's metadata in a versioned, canonical encoding; object ID = its block ID.

The manifest carries everything a holder of the verify cap needs to store, audit and repair the
object without reading it: sizes, segment size, cipher, coding k-of-n, leaf size, a commitment
to the key, and the block ID of every share. It carries no file name: storage peers see it.
"""

import functools
from dataclasses import dataclass
from typing import Any

import msgpack

from peercloud.content import merkle
from peercloud.content.cipher import CIPHER_NAME, TAG_SIZE
from peercloud.content.erasure import Coding
from peercloud.errors import FormatError

VERSION = 1
MAGIC = "peercloud-manifest"
MAX_MANIFEST_SIZE = 16 * 1024 * 1024  # fits one wire frame
MIN_SEGMENT_SIZE = 4 * 1024
MAX_SEGMENT_SIZE = 16 * 1024 * 1024  # a block must fit one wire frame
_ID = merkle.HASH_SIZE


@dataclass(frozen=True)
class Manifest:
    """Immutable description of one object; `encode()` is the only byte form it has."""

    size: int
    segment_size: int
    coding: Coding
    key_check: bytes
    block_ids: bytes  # segment-major: segment 0 shares 0..n-1, then segment 1, ...
    cipher: str = CIPHER_NAME
    leaf_size: int = merkle.LEAF_SIZE

    @property
    def segment_count(self) -> int:
        """Segments the plaintext was split into (0 for an empty object)."""
        return -(-self.size // self.segment_size)

    def segment_length(self, index: int) -> int:
        """Plaintext bytes in segment `index` (the last one may be short)."""
        return min(self.segment_size, self.size - index * self.segment_size)

    def ciphertext_length(self, index: int) -> int:
        """Encrypted bytes of segment `index`, before erasure coding."""
        return self.segment_length(index) + TAG_SIZE

    def share_size(self, index: int) -> int:
        """Bytes in each block of segment `index`."""
        return self.coding.share_size(self.ciphertext_length(index))

    def block(self, segment: int, share: int) -> bytes:
        """Block ID of one share of one segment."""
        at = (segment * self.coding.n + share) * _ID
        return self.block_ids[at : at + _ID]

    def blocks(self) -> list[tuple[int, int, bytes]]:
        """Every (segment, share, block ID) of the object, in order."""
        n = self.coding.n
        return [(i // n, i % n, self.block_ids[i * _ID : (i + 1) * _ID]) for i in range(len(self.block_ids) // _ID)]

    @property
    def stored_size(self) -> int:
        """Bytes all blocks take (one copy of each share), to show the cost of a class."""
        return sum(self.share_size(s) * self.coding.n for s in range(self.segment_count))

    def encode(self) -> bytes:
        """The canonical bytes: hashing them gives the object ID."""
        body = {
            "magic": MAGIC,
            "version": VERSION,
            "size": self.size,
            "segment_size": self.segment_size,
            "cipher": self.cipher,
            "k": self.coding.k,
            "n": self.coding.n,
            "leaf_size": self.leaf_size,
            "key_check": self.key_check,
            "blocks": self.block_ids,
        }
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    @functools.cached_property
    def object_id(self) -> bytes:
        """The object's ID: the block ID of its encoded manifest."""
        return merkle.block_id(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> "Manifest":
        """Parse untrusted bytes, rejecting anything oversized, inconsistent or non-canonical."""
        if len(data) > MAX_MANIFEST_SIZE:
            raise FormatError(f"manifest too large ({len(data)} bytes)")
        try:
            body: Any = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_MANIFEST_SIZE,
                max_str_len=64,
                max_array_len=0,
                max_map_len=16,
                max_ext_len=0,
            )
        except Exception as e:  # msgpack raises a zoo of types for malformed input
            raise FormatError(f"manifest is not valid msgpack: {e}") from None
        m = _from_body(body)
        if m.encode() != data:
            raise FormatError("manifest is not in canonical form")
        return m


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if type(value) is not kind:
        raise FormatError(f"manifest field {name!r} missing or not {kind.__name__}")
    return value


def _from_body(body: Any) -> Manifest:
    if not isinstance(body, dict):
        raise FormatError("manifest is not a map")
    if body.get("magic") != MAGIC:
        raise FormatError("not a peercloud manifest")
    if body.get("version") != VERSION:
        raise FormatError(f"unsupported manifest version {body.get('version')!r} (this is {VERSION})")
    size = _field(body, "size", int)
    segment_size = _field(body, "segment_size", int)
    cipher = _field(body, "cipher", str)
    k, n = _field(body, "k", int), _field(body, "n", int)
    leaf_size = _field(body, "leaf_size", int)
    key_check = _field(body, "key_check", bytes)
    blocks = _field(body, "blocks", bytes)
    if cipher != CIPHER_NAME:
        raise FormatError(f"unsupported cipher {cipher!r}")
    if leaf_size != merkle.LEAF_SIZE:
        raise FormatError(f"unsupported leaf size {leaf_size}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise FormatError(f"segment size {segment_size} out of range")
    if size < 0 or len(key_check) != 16:
        raise FormatError("manifest size or key check malformed")
    try:
        coding = Coding(k, n)
    except ValueError as e:
        raise FormatError(str(e)) from None
    m = Manifest(size, segment_size, coding, key_check, blocks, cipher, leaf_size)
    if len(blocks) != m.segment_count * n * _ID:
        raise FormatError("manifest block list does not match its size and coding")
    return m
