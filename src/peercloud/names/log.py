"""A bucket's index as writers' logs: entries, batches, signed heads, and which entry wins.

Each writer (a member node holding the write cap) appends immutable batches of entries to its
own log; every batch is a cloud object of the bucket's class, encrypted like any object, and
its plaintext names the batch before it. A signed head (`Head`, 321 bytes) names the writer's
latest batch: it is all that travels between members, who keep the newest head per (bucket,
epoch, writer) without being able to read anything in it but IDs. A reader walks a writer's log
back from its head to what it has, and merges: per key, the entry with the greatest (hybrid
logical clock, writer) wins, removals included, so every node that read the same batches lists
the same keys whatever order they came in.

Pure: no I/O. `node/buckets.py` stores, fetches and gossips; `store/buckettables.py` keeps.
"""

import math
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercloud.errors import FormatError, UsageError
from peercloud.identity import Identity, PeerId
from peercloud.names.caps import MAX_CLASS_NAME, BucketCap, check_key

MAX_OPS = 1000  # entries per batch
MAX_BATCH_BYTES = 4 * 1024 * 1024  # a batch's plaintext (1000 entries of the largest keys and metadata)
MAX_META_BYTES = 2048  # user metadata, as S3 allows
MAX_CONTAINERS = 2 * MAX_OPS + 16  # lists and maps a batch may hold: its entries' and their metadata's
MAX_CONTENT_TYPE = 256
FUTURE_SLACK_MS = 600_000  # a clock this far ahead of ours is not followed (its entries still count)
_HEAD = struct.Struct(">B16sI32s32sQd32s")  # version, bucket, epoch, signer, writer, seq, time, batch
_SEALED = 12 + 32 + 16  # nonce, the batch object's key, tag
_SIG = 64
HEAD_SIZE = _HEAD.size + _SEALED + 2 * _SIG
_HEAD_CONTEXT = b"peercloud bucket head v1\x00"
_CERT_CONTEXT = b"peercloud bucket writer v1\x00"
VERSION = 1


class Clock:
    """A hybrid logical clock: milliseconds in the high bits, a counter in the low 16, always
    ahead of every entry seen (from clocks not too far ahead), so a later edit wins."""

    def __init__(self) -> None:
        self.last = 0

    def tick(self) -> int:
        """The time of a new entry made here."""
        self.last = max(int(time.time() * 1000) << 16, self.last + 1)
        return self.last

    def observe(self, hlc: int) -> None:
        """An entry from another writer: ours come after it, unless its clock runs far ahead."""
        if hlc >> 16 <= int(time.time() * 1000) + FUTURE_SLACK_MS:
            self.last = max(self.last, hlc)


@dataclass(frozen=True)
class Entry:
    """One change to a key: a put naming an object (with its key, so readers can decrypt it) or
    a removal (kept as a tombstone: it must beat older puts arriving later)."""

    key: str
    hlc: int  # hybrid logical clock: milliseconds << 16 | counter
    writer: bytes  # who wrote it (its batch's writer); ties between writers go to the greater
    removed: bool = False
    object_id: bytes = b""
    object_key: bytes = b""
    size: int = 0
    mtime: float = 0.0
    content_type: str = ""
    storage_class: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def pack(self) -> list[Any]:
        """The entry inside a batch (its writer is the batch's)."""
        return [
            self.key,
            self.hlc,
            self.removed,
            self.object_id,
            self.object_key,
            self.size,
            self.mtime,
            self.content_type,
            self.storage_class,
            self.meta,
        ]

    @classmethod
    def unpack(cls, row: Any, writer: bytes) -> "Entry":
        """An entry from a decrypted batch, every field checked."""
        if not isinstance(row, list) or len(row) != 10:
            raise FormatError("bucket batch: malformed entry")
        key, hlc, removed, oid, okey, size, mtime, ctype, cls_name, meta = row
        ok = (
            isinstance(key, str)
            and _good_key(key)
            and isinstance(hlc, int)
            and 0 <= hlc < 1 << 63
            and isinstance(removed, bool)
            and isinstance(oid, bytes)
            and isinstance(okey, bytes)
            and isinstance(size, int)
            and 0 <= size < 1 << 62
            and isinstance(mtime, int | float)
            and math.isfinite(mtime)
            and isinstance(ctype, str)
            and len(ctype) <= MAX_CONTENT_TYPE
            and isinstance(cls_name, str)
            and len(cls_name.encode()) <= MAX_CLASS_NAME
            and isinstance(meta, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
            and sum(len(k.encode()) + len(v.encode()) for k, v in meta.items()) <= MAX_META_BYTES
        )
        if not ok or (removed and (oid or okey)) or (not removed and (len(oid) != 32 or len(okey) != 32)):
            raise FormatError("bucket batch: impossible entry")
        return cls(key, hlc, writer, removed, oid, okey, size, float(mtime), ctype, cls_name, dict(meta))


def _good_key(key: str) -> bool:
    try:
        check_key(key)
    except UsageError:
        return False
    return True


@dataclass(frozen=True)
class Batch:
    """A run of one writer's log in one epoch of a bucket; `prev` is the read cap (object ID and
    key) of the batch before it, empty for the first."""

    bucket_id: bytes
    epoch: int
    writer: bytes
    seq: int
    prev: bytes
    entries: tuple[Entry, ...]

    def encode(self) -> bytes:
        """The plaintext stored (encrypted) as a cloud object."""
        body = {
            "v": VERSION,
            "b": self.bucket_id,
            "e": self.epoch,
            "w": self.writer,
            "s": self.seq,
            "p": self.prev,
            "o": [e.pack() for e in self.entries],
        }
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    @classmethod
    def decode(cls, data: bytes) -> "Batch":
        """A batch from a decrypted object (its bytes are verified, its writer still untrusted)."""
        if len(data) > MAX_BATCH_BYTES:
            raise FormatError("bucket batch too large")
        containers = 0

        def count(value: Any) -> Any:  # 4 MiB of empty lists would be 4 million objects
            nonlocal containers
            containers += 1
            if containers > MAX_CONTAINERS:
                raise FormatError("bucket batch: too many lists or maps")
            return value

        try:
            body = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_BATCH_BYTES,
                max_array_len=MAX_OPS,
                max_map_len=MAX_META_BYTES,
                list_hook=count,
                object_hook=count,
                use_list=True,
            )
        except FormatError:
            raise
        except Exception as err:  # msgpack raises several types for malformed input
            raise FormatError(f"bucket batch does not decode: {err}") from None
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise FormatError("bucket batch: unknown version")
        b, e, w, s, p, ops = (body.get(x) for x in "bewspo")
        if not (
            isinstance(b, bytes)
            and len(b) == 16
            and isinstance(e, int)
            and isinstance(w, bytes)
            and len(w) == 32
            and isinstance(s, int)
            and 1 <= s < 1 << 62
            and isinstance(p, bytes)
            and len(p) == (0 if s == 1 else 64)
            and isinstance(ops, list)
            and 1 <= len(ops) <= MAX_OPS
        ):
            raise FormatError("bucket batch: malformed header")
        return cls(b, e, w, s, p, tuple(Entry.unpack(row, w) for row in ops))


def _head_key(read_key: bytes) -> AESGCM:
    return AESGCM(blake3.blake3(read_key, derive_key_context="peercloud bucket head key v1").digest())


def certify(cap: BucketCap, writer: bytes) -> bytes:
    """The epoch's signing key vouches that `writer` (a node's key) writes to the bucket."""
    return cap.signing.sign(_CERT_CONTEXT + cap.bucket_id + struct.pack(">I", cap.epoch) + writer)


@dataclass(frozen=True)
class Head:
    """The signed pointer to a writer's latest batch: what members keep and gossip."""

    bucket_id: bytes
    epoch: int
    signer: bytes
    writer: bytes
    seq: int
    at: float
    batch_id: bytes  # the batch object's ID (a verify cap: members may hold it, not read it)
    sealed_key: bytes  # its key, encrypted under the bucket's read key
    cert: bytes
    signature: bytes

    @classmethod
    def sign(
        cls, identity: Identity, cap: BucketCap, cert: bytes, seq: int, batch_id: bytes, batch_key: bytes
    ) -> "Head":
        """This node's new head in a bucket it writes to."""
        writer = identity.peer_id.public_key
        fixed = _HEAD.pack(VERSION, cap.bucket_id, cap.epoch, cap.signer, writer, seq, time.time(), batch_id)
        nonce = os.urandom(12)
        sealed = nonce + _head_key(cap.read_key).encrypt(nonce, batch_key, fixed)
        signature = identity.sign(_HEAD_CONTEXT + fixed + sealed + cert)
        return cls.decode(fixed + sealed + cert + signature)

    def encode(self) -> bytes:
        """The head as it travels and is kept (HEAD_SIZE bytes)."""
        fixed = _HEAD.pack(
            VERSION, self.bucket_id, self.epoch, self.signer, self.writer, self.seq, self.at, self.batch_id
        )
        return fixed + self.sealed_key + self.cert + self.signature

    @classmethod
    def decode(cls, data: bytes) -> "Head":
        """Parse a head from an untrusted peer and check both signatures: the writer's over the
        head, and the epoch's signing key over the writer (whether that key is the bucket's is for
        a reader to know, from its cap)."""
        if len(data) != HEAD_SIZE:
            raise FormatError("bucket head: wrong size")
        version, bucket, epoch, signer, writer, seq, at, batch_id = _HEAD.unpack_from(data)
        if version != VERSION or not 1 <= seq < 1 << 62 or epoch < 1 or not math.isfinite(at):
            raise FormatError("bucket head: malformed")
        pos = _HEAD.size
        sealed, cert, signature = data[pos : pos + _SEALED], data[pos + _SEALED : -_SIG], data[-_SIG:]
        if not PeerId(signer).verify(cert, _CERT_CONTEXT + bucket + struct.pack(">I", epoch) + writer):
            raise FormatError("bucket head: its writer is not certified by the bucket's key")
        if not PeerId(writer).verify(signature, _HEAD_CONTEXT + data[:-_SIG]):
            raise FormatError("bucket head signature does not match: forged or altered")
        return cls(bucket, epoch, signer, writer, seq, at, batch_id, sealed, cert, signature)

    def batch_key(self, cap: BucketCap) -> bytes:
        """The batch object's key, for a reader of this epoch (FormatError for another cap)."""
        if (cap.bucket_id, cap.epoch, cap.signer) != (self.bucket_id, self.epoch, self.signer):
            raise FormatError("bucket head belongs to another bucket or epoch")
        fixed = self.encode()[: _HEAD.size]
        try:
            return _head_key(cap.read_key).decrypt(self.sealed_key[:12], self.sealed_key[12:], fixed)
        except InvalidTag:
            raise FormatError("bucket head: its batch key does not open with this cap") from None


def peek(data: bytes) -> tuple[bytes, int, bytes, int]:
    """(bucket, epoch, writer, seq) of a head before its signatures are checked: replays are
    dropped without that cost."""
    if len(data) != HEAD_SIZE:
        raise FormatError("bucket head: wrong size")
    _, bucket, epoch, _, writer, seq, *_ = _HEAD.unpack_from(data)
    return bucket, epoch, writer, seq
