"""The catalog's rules: signed batches of entries, who may write what, and which entry counts.

Every member keeps a log of the catalog entries it owns: sequence-numbered batches, each one
Ed25519 signature over a header that commits to its entries by a Merkle root. One signature
covers up to MAX_OPS entries, so a newcomer checks 100,000 entries with 250 signatures rather
than 100,000. An entry is (object, owner): an owner's own `put` (class and shape) or `remove`;
nobody writes an entry of another owner, so a member can neither plant entries in someone
else's name nor weaken the class of their object. Several owners of one object (convergent
adds) each keep their own entry; the object's class is the strongest of its live entries. An
admin's `erase` ends every owner's entry made before it: the object is deleted outright.

Pure functions, no I/O; `node/catalog.py` syncs the logs and `store/catalogtables.py` keeps them.
"""

import dataclasses
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import blake3

from peercloud.cloud.classes import StorageClass
from peercloud.content import merkle
from peercloud.content.manifest import MAX_MANIFEST_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, Manifest
from peercloud.errors import FormatError, RefusedError
from peercloud.identity import Identity, PeerId
from peercloud.store.catalogtables import ERASE as ERASE
from peercloud.store.catalogtables import PUT as PUT
from peercloud.store.catalogtables import REMOVE as REMOVE
from peercloud.store.catalogtables import OwnedEntry

MAX_BLOCKS = MAX_MANIFEST_SIZE // 32  # the most blocks a manifest can list
MAX_OPS = 400  # entries per batch: a batch fits one 60 KB page with room to spare
MAX_LOG_OPS = 1_000_000  # entries one member's log may hold: 10x a large library, and a bound
FUTURE_SLACK = 600.0  # an entry dated further ahead than this is refused (it would outlive deletes)
NO_PREV = bytes(32)  # the `prev` of an author's first batch
DELETE_EXPIRY = 3600.0  # a removal or erase signed longer than this after it was made is refused
MAX_CLASS_NAME = 32
_SIGN_CONTEXT = b"peercloud catalog batch v1\x00"
_GRANT_CONTEXT = b"peercloud catalog grant v1\x00"
_HEADER = struct.Struct(">B16s32sQ32sdI32s")  # version, cloud, author, seq, prev, time, count, root
_FOR = struct.Struct(">32s64s")  # version 2: the owner the entries are for, and its grant to the author
_SIGNATURE = 64
_OP = struct.Struct(">B32sdIHHQB")  # kind, object, time, total blocks, k, n, size, class length
VERSION = 1
FOR_OWNER = 2  # a batch of entries for an owner key other than its author's (with the owner's grant)


def shape_problem(total: int, k: int, n: int, size: int) -> str | None:
    """Why an entry's shape is impossible (no manifest could have it), or None."""
    if not (1 <= k <= n <= 256 and total % n == 0 and 0 < total <= MAX_BLOCKS):
        return "coding or block count impossible"
    segments = total // n
    if not (segments - 1) * MIN_SEGMENT_SIZE < size <= segments * MAX_SEGMENT_SIZE:
        return "size does not fit its segments"
    return None


def manifest_problem(e: OwnedEntry, manifest: Manifest) -> str | None:
    """Why an entry does not describe this manifest (its owner lied about the shape), or None."""
    coding = manifest.coding
    if (e.total_blocks, e.k, e.n, e.size) != (len(manifest.blocks()), coding.k, coding.n, manifest.size):
        return "its shape differs from the object's manifest"
    return None


@dataclass(frozen=True)
class Op:
    """One entry of an owner's log: `put` (the object is the owner's, with this class), `remove`
    (it is no longer), or an admin's `erase` (no entry made before it counts: deleted outright)."""

    kind: int
    object_id: bytes
    at: float  # when the owner made it: a delete made later than a put erases it
    storage_class: str = ""
    total_blocks: int = 0
    k: int = 0
    n: int = 0
    size: int = 0

    def encode(self) -> bytes:
        """The entry as it is signed and travels."""
        name = self.storage_class.encode()
        return (
            _OP.pack(self.kind, self.object_id, self.at, self.total_blocks, self.k, self.n, self.size, len(name)) + name
        )

    def problem(self) -> str | None:
        """Why no owner could have made this entry, or None."""
        if not math.isfinite(self.at) or self.at < 0:
            return "entry time is not a time"
        if self.kind in (REMOVE, ERASE):
            ok = (self.storage_class, self.total_blocks, self.k, self.n, self.size) == ("", 0, 0, 0, 0)
            return None if ok else "a removal carries no class or shape"
        if self.kind != PUT:
            return f"unknown entry kind {self.kind}"
        if not self.storage_class:
            return "a put names its class"
        return shape_problem(self.total_blocks, self.k, self.n, self.size)


def digest(data: bytes) -> bytes:
    """A batch's hash as the next batch of its log names it (`prev`) and heads carry it."""
    return blake3.blake3(data).digest()


def grant(owner: Identity, cloud_id: bytes, author: bytes) -> bytes:
    """An owner key lets a member write its entries (a bucket's owner key, held by each device
    that writes to the bucket, lets every one of them remove what another put)."""
    return owner.sign(_GRANT_CONTEXT + cloud_id + author)


def peek(data: bytes) -> tuple[bytes, int]:
    """(author, seq) of a batch, read before anything is verified: a replay or a batch a pull
    will bring anyway is dropped without the cost of its checks."""
    if len(data) < _HEADER.size:
        raise FormatError("catalog batch: truncated header")
    _, _, author, seq, *_ = _HEADER.unpack_from(data)
    return author, seq


@dataclass(frozen=True)
class Batch:
    """A signed run of one author's log: entries `seq`'s of them, in the order they were made,
    chained to the batch before (`prev`), so an author cannot tell two halves of the cloud two
    different stories under one number without it showing."""

    cloud_id: bytes
    author: PeerId
    seq: int
    prev: bytes
    at: float
    ops: tuple[Op, ...]
    root: bytes
    signature: bytes
    owner: bytes = b""  # the owner its entries are for, when not its author (with `grant`)
    grant: bytes = b""

    @property
    def owner_key(self) -> bytes:
        """Whose entries these are."""
        return self.owner or self.author.public_key

    @classmethod
    def sign(
        cls,
        identity: Identity,
        cloud_id: bytes,
        seq: int,
        prev: bytes,
        at: float,
        ops: Iterable[Op],
        owner: bytes = b"",
        owner_grant: bytes = b"",
    ) -> "Batch":
        """Sign the next batch of this node's own log (for another owner key: with its grant)."""
        ops = tuple(ops)
        if not 1 <= len(ops) <= MAX_OPS:
            raise ValueError(f"a batch holds 1..{MAX_OPS} entries")
        root = merkle.tree_root([op.encode() for op in ops])
        unsigned = cls(cloud_id, identity.peer_id, seq, prev, at, ops, root, b"", owner, owner_grant)
        return dataclasses.replace(unsigned, signature=identity.sign(_SIGN_CONTEXT + unsigned._header()))

    def _header(self) -> bytes:
        version = FOR_OWNER if self.owner else VERSION
        header = _HEADER.pack(
            version, self.cloud_id, self.author.public_key, self.seq, self.prev, self.at, len(self.ops), self.root
        )
        return header + _FOR.pack(self.owner, self.grant) if self.owner else header

    def encode(self) -> bytes:
        """The batch as it is stored and travels."""
        return self._header() + self.signature + b"".join(op.encode() for op in self.ops)

    @classmethod
    def decode(cls, data: bytes) -> "Batch":
        """Parse a batch from an untrusted peer and check its signature and root (not the author's
        right to write: that is `check`'s, against the cloud document)."""
        if len(data) < _HEADER.size + _SIGNATURE:
            raise FormatError("catalog batch: truncated header")
        version, cloud, author, seq, prev, at, count, root = _HEADER.unpack_from(data)
        if version not in (VERSION, FOR_OWNER) or not 1 <= count <= MAX_OPS or not 1 <= seq < 1 << 62:
            raise FormatError("catalog batch: malformed header")
        if not math.isfinite(at):
            raise FormatError("catalog batch: malformed header")
        header_size, owner, owner_grant = _HEADER.size, b"", b""
        if version == FOR_OWNER:
            if len(data) < _HEADER.size + _FOR.size + _SIGNATURE:
                raise FormatError("catalog batch: truncated header")
            owner, owner_grant = _FOR.unpack_from(data, _HEADER.size)
            header_size += _FOR.size
            if owner == author:
                raise FormatError("catalog batch: an author's own entries need no grant")
        signature = data[header_size : header_size + _SIGNATURE]
        pos, view, ops, leaves = header_size + _SIGNATURE, memoryview(data), [], []
        for _ in range(count):
            if len(view) - pos < _OP.size:
                raise FormatError("catalog batch: truncated entry")
            kind, oid, op_at, total, k, n, size, length = _OP.unpack_from(view, pos)
            end = pos + _OP.size + length
            if length > MAX_CLASS_NAME or end > len(view):
                raise FormatError("catalog batch: malformed entry")
            try:
                name = bytes(view[pos + _OP.size : end]).decode()
            except UnicodeDecodeError:
                raise FormatError("catalog batch: class name is not UTF-8") from None
            leaves.append(bytes(view[pos:end]))
            ops.append(Op(kind, oid, op_at, name, total, k, n, size))
            pos = end
        if pos != len(view):
            raise FormatError("catalog batch: trailing bytes")
        if merkle.tree_root(leaves) != root:
            raise FormatError("catalog batch: entries do not match their root")
        peer = PeerId(author)
        if not peer.verify(signature, _SIGN_CONTEXT + data[:header_size]):
            raise FormatError("catalog batch signature does not match: it was forged or altered")
        if owner and not PeerId(owner).verify(owner_grant, _GRANT_CONTEXT + cloud + author):
            raise FormatError("catalog batch: its owner never let its author write for it")
        return cls(cloud, peer, seq, prev, at, tuple(ops), root, signature, owner, owner_grant)

    def check(
        self, cloud_id: bytes, members: Iterable[PeerId], head: int, head_digest: bytes, logged: int, now: float
    ) -> None:
        """RefusedError unless this batch may extend its author's log here: the author is a member
        of our cloud, the batch is the next of its log and names the one we hold before it,
        within the cap, and every entry possible."""
        if self.cloud_id != cloud_id:
            raise RefusedError("catalog batch belongs to another cloud")
        if self.author not in set(members):
            raise RefusedError(f"catalog batch by {self.author.short()}, who is not a member")
        if self.seq != head + 1:
            raise RefusedError(f"catalog batch {self.seq} of {self.author.short()} does not follow {head}")
        if self.prev != (head_digest if head else NO_PREV):
            raise RefusedError(
                f"catalog batch {self.seq} of {self.author.short()} follows another batch {head} than ours:"
                " its author signed two different logs"
            )
        if logged + len(self.ops) > MAX_LOG_OPS:
            raise RefusedError(f"{self.author.short()}'s catalog log is full ({MAX_LOG_OPS} entries)")
        for op in self.ops:
            problem = (
                op.problem()
                or ("an erase is an admin's own entry" if self.owner and op.kind == ERASE else None)
                or ("entry dated in the future" if op.at > now + FUTURE_SLACK or self.at > now + FUTURE_SLACK else None)
                or ("delete expired" if op.kind in (REMOVE, ERASE) and self.at - op.at > DELETE_EXPIRY else None)
            )
            if problem is not None:
                raise RefusedError(f"catalog batch {self.seq} of {self.author.short()}: {problem}")


def rank(cls: StorageClass | None) -> int:
    """How strong a class is, by the losses it survives and then the copies it keeps: an object
    several owners added is kept under the strongest of their classes. An unknown class ranks last."""
    if cls is None:
        return 0
    tolerance, copies = (cls.replicas - 1, cls.max_replicas) if cls.replicas else (cls.m, cls.k + cls.m)
    return (tolerance + 1) * 1000 + copies


def coded_as(cls: StorageClass | None, k: int, n: int) -> bool:
    """Whether a put's shape fits its class (an unknown class is judged once it is known): a
    class of another coding would have holders keep nothing, or the wrong blocks."""
    return cls is None or (cls.coding.k, cls.coding.n) == (k, n)


def owned(op: Op, owner: bytes, classes: Mapping[str, StorageClass], author: bytes = b"") -> OwnedEntry:
    """An owner's entry as the index keeps it (written by `author`, the owner itself when
    empty), ranked by the classes we know; a put whose class codes objects otherwise than its
    shape says never counts."""
    cls = classes.get(op.storage_class)
    return OwnedEntry(
        op.object_id,
        owner,
        op.kind,
        op.storage_class,
        op.total_blocks,
        op.k,
        op.n,
        op.size,
        op.at,
        rank(cls) if op.kind == PUT else 0,
        bad=op.kind == PUT and not coded_as(cls, op.k, op.n),
        author=author if author != owner else b"",
    )


def op_of(e: OwnedEntry) -> Op:
    """The log entry an owner signs for its own entry."""
    return Op(e.kind, e.object_id, e.at, e.storage_class, e.total_blocks, e.k, e.n, e.size)


_HEAD = struct.Struct(">32sQ16s")  # author, seq, the first 16 bytes of its batch's digest


def pack_heads(heads: Mapping[bytes, tuple[int, bytes]]) -> bytes:
    """Per author, the last batch of its log held here and its digest: what members compare."""
    return b"".join(_HEAD.pack(a, seq, d[:16]) for a, (seq, d) in sorted(heads.items()))


def unpack_heads(data: bytes, limit: int) -> dict[bytes, tuple[int, bytes]]:
    """Parse a member's heads (at most `limit` authors): author -> (seq, digest prefix)."""
    if len(data) % _HEAD.size or len(data) // _HEAD.size > limit:
        raise FormatError("catalog heads malformed or too many")
    out = {}
    for pos in range(0, len(data), _HEAD.size):
        author, seq, prefix = _HEAD.unpack_from(data, pos)
        if not 1 <= seq < 1 << 62:
            raise FormatError("catalog heads: impossible sequence number")
        out[author] = (seq, prefix)
    return out
