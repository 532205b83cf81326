"""A bucket's keys and the caps that carry them; the rules a key name follows.

A bucket is known by a random 16-byte ID. Each epoch of it (a new one at every `unshare`) has
its own keys: a read key (AES-256-GCM: the batches of its index and the object caps in them), a
signing key whose public half every reader holds (it certifies the writers), and an owner key
(the catalog owner of what writers put, shared by every writer, so any of them can delete it).
A read cap carries the read key and the public signing key; a write cap the private halves.
Caps are checked strings (`textid`), like object caps and peer IDs.
"""

import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peercloud import textid
from peercloud.errors import UsageError
from peercloud.identity import Identity

READ_PREFIX = "pcbr1"
WRITE_PREFIX = "pcbw1"
BUCKET_ID_SIZE = 16
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
MAX_NAME = 63  # a local alias, like an S3 bucket name
MAX_CLASS_NAME = 32
_FIXED = struct.Struct(">16sI32s32s")  # bucket, epoch, read key, public signing key (or its seed)


def public_of(seed: bytes) -> bytes:
    """The public half of an Ed25519 seed."""
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


@dataclass(frozen=True)
class BucketCap:
    """What a node knows of one epoch of a bucket: enough to read, and with the seeds to write."""

    bucket_id: bytes
    epoch: int
    read_key: bytes
    signer: bytes  # public key that certifies this epoch's writers
    storage_class: str
    sign_seed: bytes | None = None  # write caps only
    owner_seed: bytes | None = None  # write caps only

    @classmethod
    def new(cls, storage_class: str, bucket_id: bytes | None = None, epoch: int = 1) -> "BucketCap":
        """Fresh keys for a new bucket, or for the next epoch of one."""
        seed = os.urandom(32)
        return cls(
            bucket_id or os.urandom(BUCKET_ID_SIZE),
            epoch,
            os.urandom(32),
            public_of(seed),
            storage_class,
            seed,
            os.urandom(32),
        )

    @property
    def writable(self) -> bool:
        """Whether this cap may put and remove keys."""
        return self.sign_seed is not None

    @property
    def owner(self) -> Identity:
        """The key that owns, in the catalog, what writers put."""
        if self.owner_seed is None:
            raise UsageError("a read cap cannot write to its bucket")
        return Identity(Ed25519PrivateKey.from_private_bytes(self.owner_seed))

    @property
    def owner_pair(self) -> tuple[bytes, bytes] | None:
        """(public key, seed) of the owner key, for a write cap."""
        if self.owner_seed is None:
            return None
        return public_of(self.owner_seed), self.owner_seed

    @property
    def signing(self) -> Identity:
        """The key that certifies writers (write caps only)."""
        if self.sign_seed is None:
            raise UsageError("a read cap cannot write to its bucket")
        return Identity(Ed25519PrivateKey.from_private_bytes(self.sign_seed))

    def reader(self) -> "BucketCap":
        """The read-only cap of the same epoch."""
        return BucketCap(self.bucket_id, self.epoch, self.read_key, self.signer, self.storage_class)

    def __str__(self) -> str:
        name = self.storage_class.encode()
        if self.sign_seed is None or self.owner_seed is None:
            fixed = _FIXED.pack(self.bucket_id, self.epoch, self.read_key, self.signer)
            return textid.encode(READ_PREFIX, fixed + name)
        fixed = _FIXED.pack(self.bucket_id, self.epoch, self.read_key, self.sign_seed)
        return textid.encode(WRITE_PREFIX, fixed + self.owner_seed + name)

    @classmethod
    def parse(cls, text: str) -> "BucketCap":
        """Read a bucket cap a user pasted (`bucket share` prints them)."""
        text = text.strip()
        writer = text.lower().startswith(WRITE_PREFIX + "_")
        prefix = WRITE_PREFIX if writer else READ_PREFIX
        try:
            raw = textid.decode(prefix, text, None, "bucket write cap" if writer else "bucket cap")
        except ValueError as e:
            raise UsageError(str(e)) from None
        extra = 32 if writer else 0
        if not _FIXED.size + extra < len(raw) <= _FIXED.size + extra + MAX_CLASS_NAME:
            raise UsageError("not a bucket cap: wrong length")
        bucket_id, epoch, read_key, key = _FIXED.unpack_from(raw)
        try:
            storage_class = raw[_FIXED.size + extra :].decode()
        except UnicodeDecodeError:
            raise UsageError("not a bucket cap: its class name is not UTF-8") from None
        if epoch < 1:
            raise UsageError("not a bucket cap: epoch 0")
        if not writer:
            return cls(bucket_id, epoch, read_key, key, storage_class)
        owner = raw[_FIXED.size : _FIXED.size + 32]
        return cls(bucket_id, epoch, read_key, public_of(key), storage_class, key, owner)


def check_key(key: str) -> bytes:
    """A key's bytes, or UsageError: UTF-8, 1 to 1024 bytes, no control character (C0, DEL, C1),
    not starting with '/', no empty, '.' or '..' segment (a key becomes a path on `get DIR`)."""
    raw = key.encode()
    if not 1 <= len(raw) <= MAX_KEY_BYTES:
        raise UsageError(f"a key is 1 to {MAX_KEY_BYTES} bytes of UTF-8 ({len(raw)} given)")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):  # C0, DEL and C1
        raise UsageError("a key holds no control characters")
    parts = key.split("/")
    if key.startswith("/") or any(p in (".", "..") for p in parts) or any(p == "" for p in parts[:-1]):
        raise UsageError(f"key {key!r}: no leading '/', empty, '.' or '..' segments")
    return raw


def check_name(name: str) -> str:
    """A local bucket alias, or UsageError: 1 to 63 of a-z, 0-9, '.', '-', '_', no '/'."""
    ok = 1 <= len(name) <= MAX_NAME and all(c.isascii() and (c.isalnum() or c in ".-_") for c in name)
    if not ok or name != name.lower() or name.startswith("."):
        raise UsageError(f"bucket name {name!r}: 1 to {MAX_NAME} of a-z, 0-9, '.', '-', '_' (not starting with '.')")
    return name
