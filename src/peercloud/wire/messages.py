"""Peer messages: dataclasses and their msgpack headers (`frames.py` carries them).

The header is a map with the message type under "t" and the message's fields. Only BLOCK
carries a payload: block bytes travel raw after the header, never re-encoded. Every decoder
here reads untrusted bytes: sizes are bounded, and every field is type-checked.
"""

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import msgpack

from peercloud.content.manifest import MAX_MANIFEST_SIZE, MAX_SEGMENT_SIZE

PROTOCOL_VERSION = 1
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = max(MAX_SEGMENT_SIZE + 16, MAX_MANIFEST_SIZE)
HAVE_PIECE = 32 * 1024  # bitmap bytes per HAVE message
MAX_HAVE_BITMAP = MAX_MANIFEST_SIZE // 32 // 8  # one bit per block a manifest can list


class ProtocolError(Exception):
    """The peer sent something malformed or forbidden; the connection must close."""


@dataclass(frozen=True)
class Message:
    """Base of all messages; `TYPE` is the wire name."""

    TYPE: ClassVar[str] = ""


@dataclass(frozen=True)
class Hello(Message):
    """Sent inside the handshake: protocol version, features, software, where we listen, and (from
    the dialing side) the kind of path it dialed: `lan`, `direct`, `mapped`, `punched`, `relayed`."""

    TYPE: ClassVar[str] = "hello"
    version: int
    features: tuple[str, ...] = ()
    agent: str = ""
    listen: tuple[str, ...] = ()
    path: str = ""


@dataclass(frozen=True)
class Ping(Message):
    """Liveness and RTT probe."""

    TYPE: ClassVar[str] = "ping"
    id: int


@dataclass(frozen=True)
class Pong(Message):
    """Answer to a ping."""

    TYPE: ClassVar[str] = "pong"
    id: int


@dataclass(frozen=True)
class GetBlock(Message):
    """Ask for one block by ID."""

    TYPE: ClassVar[str] = "get"
    id: int
    block: bytes


@dataclass(frozen=True)
class BlockData(Message):
    """A block, its bytes as the frame payload; the receiver verifies them against `block`."""

    TYPE: ClassVar[str] = "block"
    id: int
    block: bytes


@dataclass(frozen=True)
class Cancel(Message):
    """Withdraw a request (endgame: another peer answered first)."""

    TYPE: ClassVar[str] = "cancel"
    id: int


@dataclass(frozen=True)
class Have(Message):
    """Which blocks of one object the sender holds: a bitmap over the manifest's block list.

    Large bitmaps travel in pieces; `offset` is where this piece starts, in bytes.
    """

    TYPE: ClassVar[str] = "have"
    object: bytes
    bitmap: bytes
    offset: int = 0
    pinned: bool = False  # held by the sender's own choice: an extra copy placement neither counts nor releases
    provisional: bool = False  # an owner's fresh EC shares: kept until placement spread them


@dataclass(frozen=True)
class Join(Message):
    """Ask an admin to add the sender to a cloud, presenting an invite secret."""

    TYPE: ClassVar[str] = "join"
    id: int
    cloud: bytes
    secret: bytes
    offer: int
    tags: tuple[str, ...] = ()  # KEY=VALUE
    listen: tuple[str, ...] = ()  # where the sender accepts connections (host may be empty)


@dataclass(frozen=True)
class Leave(Message):
    """Ask an admin to remove the sender from the cloud."""

    TYPE: ClassVar[str] = "leave"
    id: int
    cloud: bytes


@dataclass(frozen=True)
class Place(Message):
    """Ask a member to hold share columns of an object, pulling their blocks from the swarm.

    Share j of every segment is column j (replicated objects have the one column 0).
    """

    TYPE: ClassVar[str] = "place"
    id: int
    object: bytes
    shares: tuple[int, ...]
    cls: str


@dataclass(frozen=True)
class Release(Message):
    """Ask a member to stop holding share columns it holds for the cloud (above the class max)."""

    TYPE: ClassVar[str] = "release"
    id: int
    object: bytes
    shares: tuple[int, ...]


@dataclass(frozen=True)
class Audit(Message):
    """A storage challenge: prove holding `block` by sending leaf `leaf` with its Merkle path."""

    TYPE: ClassVar[str] = "audit"
    id: int
    block: bytes
    leaf: int


@dataclass(frozen=True)
class Proof(Message):
    """Answer to an audit: the leaf bytes as payload, the sibling hashes up to the block ID."""

    TYPE: ClassVar[str] = "proof"
    id: int
    block: bytes
    leaf: int
    path: tuple[bytes, ...]


@dataclass(frozen=True)
class Ok(Message):
    """Success answer to a cloud request; a join's answer carries the signed cloud document."""

    TYPE: ClassVar[str] = "ok"
    id: int
    doc: bytes = b""


@dataclass(frozen=True)
class CloudDoc(Message):
    """Gossip: the sender's newest signed cloud document."""

    TYPE: ClassVar[str] = "cloud"
    doc: bytes


@dataclass(frozen=True)
class CloudDocWant(Message):
    """Ask a member for one earlier version of the cloud document (answered by `Ok` with it):
    to fill in the chain below a version that does not follow ours, and find where it forked."""

    TYPE: ClassVar[str] = "cloud_want"
    id: int
    cloud: bytes
    seq: int


@dataclass(frozen=True)
class CatalogBatch(Message):
    """Gossip: a member's newly signed batch of catalog entries (`cloud/catalog.py`); a receiver
    that misses earlier batches of that log pulls them (`CatalogWant`)."""

    TYPE: ClassVar[str] = "catalog_batch"
    batch: bytes


@dataclass(frozen=True)
class Haves(Message):
    """Inventory in bulk: many objects' HAVE bitmaps in one message (`wire/batches.py` packs them).

    Sent when a link opens and whenever holdings change, so a library of 100,000 objects costs
    dozens of messages, not 100,000; objects with bitmaps too long for a batch go as `Have`.
    """

    TYPE: ClassVar[str] = "haves"
    entries: bytes


@dataclass(frozen=True)
class HaveQuery(Message):
    """Ask for the sender's HAVEs of some objects (32-byte IDs, concatenated): a node that just
    learned an object (fetched its manifest) had dropped earlier announcements of it."""

    TYPE: ClassVar[str] = "have_query"
    objects: bytes


@dataclass(frozen=True)
class DeleteReceipts(Message):
    """Gossip: signed receipts (`formats.md`) of what the sender did with objects a member
    deleted; sent when it acts, and again on every new link to a member while it keeps them."""

    TYPE: ClassVar[str] = "delete_receipts"
    receipts: tuple[bytes, ...]


@dataclass(frozen=True)
class BucketHeads(Message):
    """Gossip: signed heads of bucket logs (`names/log.py`, 321 bytes each), at most
    MAX_BUCKET_HEADS per message: a writer's new head, or every head kept, to a member that connects."""

    TYPE: ClassVar[str] = "bucket_heads"
    heads: tuple[bytes, ...]


@dataclass(frozen=True)
class CatalogHeads(Message):
    """Gossip: per author, the last batch of its catalog log the sender holds (40 bytes each).

    A member that holds less of some log pulls the rest (`CatalogWant`) from that peer.
    """

    TYPE: ClassVar[str] = "catalog_heads"
    heads: bytes


@dataclass(frozen=True)
class CatalogWant(Message):
    """Ask a member for an author's catalog batches after batch `after`."""

    TYPE: ClassVar[str] = "catalog_want"
    id: int
    author: bytes
    after: int = 0


@dataclass(frozen=True)
class CatalogPage(Message):
    """Answer to `CatalogWant`: consecutive signed batches; `more` when the log goes on."""

    TYPE: ClassVar[str] = "catalog_page"
    id: int
    batches: tuple[bytes, ...] = ()
    more: bool = False


@dataclass(frozen=True)
class Records(Message):
    """Gossip: signed peer records (`connect/record.py`), the sender's own first; each is verified
    by the receiver, who keeps only the newest of peers it has a reason to reach."""

    TYPE: ClassVar[str] = "records"
    records: tuple[bytes, ...]


@dataclass(frozen=True)
class Publish(Message):
    """Directory: keep this signed record of mine (the directory verifies it; newest wins)."""

    TYPE: ClassVar[str] = "publish"
    id: int
    record: bytes


@dataclass(frozen=True)
class Published(Message):
    """The directory kept the record, and saw the publisher come from `observed` (HOST:PORT)."""

    TYPE: ClassVar[str] = "published"
    id: int
    observed: str
    expires_at: int  # when the directory forgets the record unless it is published again


@dataclass(frozen=True)
class Lookup(Message):
    """Directory: the newest record you have of this peer (a 32-byte public key)."""

    TYPE: ClassVar[str] = "lookup"
    id: int
    peer: bytes


@dataclass(frozen=True)
class Found(Message):
    """Answer to `Lookup`: the record, signed by its peer (the asker verifies it again)."""

    TYPE: ClassVar[str] = "found"
    id: int
    record: bytes


@dataclass(frozen=True)
class Reserve(Message):
    """Relay: keep a reservation for me, so peers that cannot reach me directly reach me through you."""

    TYPE: ClassVar[str] = "reserve"
    id: int


@dataclass(frozen=True)
class Reserved(Message):
    """The reservation holds until `expires_at`; circuits join at the relay's splice `port`; the
    relay saw the holder come from `observed`."""

    TYPE: ClassVar[str] = "reserved"
    id: int
    expires_at: int
    port: int
    observed: str


@dataclass(frozen=True)
class CircuitOpen(Message):
    """Relay: connect me to this peer (a 32-byte public key), which holds a reservation with you."""

    TYPE: ClassVar[str] = "circuit_open"
    id: int
    peer: bytes


@dataclass(frozen=True)
class Circuit(Message):
    """The circuit is ready: join it at the splice `port` with `token` (32 bytes), within 10 s."""

    TYPE: ClassVar[str] = "circuit"
    id: int
    token: bytes
    port: int


@dataclass(frozen=True)
class CircuitIncoming(Message):
    """Relay to a reserved peer: `peer` asks for a circuit to you; join at `port` with `token`."""

    TYPE: ClassVar[str] = "circuit_incoming"
    peer: bytes
    token: bytes
    port: int


@dataclass(frozen=True)
class Punch(Message):
    """Over a relayed link: let us punch a direct path; these are my public addresses (HOST:PORT)."""

    TYPE: ClassVar[str] = "punch"
    id: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class PunchOk(Message):
    """Agreed; these are mine. Dial them the moment you send `punch_go` (plus half a round trip)."""

    TYPE: ClassVar[str] = "punch_ok"
    id: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class PunchGo(Message):
    """Dial now: the sender dials half a round trip later, so both SYNs leave together."""

    TYPE: ClassVar[str] = "punch_go"


@dataclass(frozen=True)
class Error(Message):
    """A typed failure: in answer to request `id`, or (id 0) about the connection."""

    TYPE: ClassVar[str] = "error"
    id: int
    code: str
    message: str = ""


@dataclass(frozen=True)
class Bye(Message):
    """The sender closes the connection, and says why."""

    TYPE: ClassVar[str] = "bye"
    reason: str = ""


# Requests and the answers each accepts (Error answers any request).
REQUESTS: dict[type[Message], tuple[type[Message], ...]] = {
    GetBlock: (BlockData,),
    Ping: (Pong,),
    Join: (Ok,),
    Leave: (Ok,),
    CloudDocWant: (Ok,),
    Place: (Ok,),
    Release: (Ok,),
    Audit: (Proof,),
    CatalogWant: (CatalogPage,),
    Publish: (Published,),
    Lookup: (Found,),
    Reserve: (Reserved,),
    CircuitOpen: (Circuit,),
    Punch: (PunchOk,),
}
RESPONSES = (BlockData, Pong, Ok, Proof, CatalogPage, Published, Found, Reserved, Circuit, PunchOk, Error)
NOTICES = (
    Have,
    Haves,
    HaveQuery,
    CloudDoc,
    CatalogBatch,
    CatalogHeads,
    BucketHeads,
    DeleteReceipts,
    Records,
    CircuitIncoming,
    PunchGo,
)
Request = (
    GetBlock
    | Ping
    | Join
    | Leave
    | CloudDocWant
    | Place
    | Release
    | Audit
    | CatalogWant
    | Publish
    | Lookup
    | Reserve
    | CircuitOpen
    | Punch
)
Notice = (
    Have
    | Haves
    | HaveQuery
    | CloudDoc
    | CatalogBatch
    | CatalogHeads
    | BucketHeads
    | DeleteReceipts
    | Records
    | CircuitIncoming
    | PunchGo
)
MAX_RECORDS = 32  # records per Records message
MAX_BUCKET_HEADS = 64  # heads per BucketHeads message (21 KB; headers hold arrays of up to 64)
BUCKET_HEAD_SIZE = 321
PATHS = ("lan", "direct", "mapped", "punched", "relayed")
_ALL: tuple[type[Message], ...] = (Hello, Cancel, Bye, *REQUESTS, *RESPONSES, *NOTICES)
MESSAGES: dict[str, type[Message]] = {cls.TYPE: cls for cls in _ALL}
_HINTS = {name: get_type_hints(cls) for name, cls in MESSAGES.items()}
_FIELDS = {name: tuple(f.name for f in fields(cls)) for name, cls in MESSAGES.items()}  # fields() per message costs
# Error codes a peer may send; anything else is reported as "other".
ERROR_CODES = (
    "not_found",
    "busy",
    "bad_request",
    "version",
    "refused",
    "no_reservation",  # relay: the peer asked for holds no reservation here
    "full",  # relay: no room for another reservation
    "over_quota",  # relay: circuits per peer reached
    "other",
)


def encode_header(msg: Message) -> bytes:
    """The msgpack header of a message."""
    body: dict[str, Any] = {"t": msg.TYPE}
    for name in _FIELDS[msg.TYPE]:
        value = getattr(msg, name)
        body[name] = list(value) if isinstance(value, tuple) else value
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _check(name: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is tuple:
        (item, _ellipsis) = get_args(hint)
        if not isinstance(value, list) or len(value) > 64:
            raise ProtocolError(f"field {name!r}: expected a short list")
        return tuple(_check(name, v, item) for v in value)
    if origin is Union:
        for option in get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                return _check(name, value, option)
    if type(value) is not hint:
        raise ProtocolError(f"field {name!r}: expected {hint.__name__}, got {type(value).__name__}")
    if isinstance(value, int) and not 0 <= value < 2**63:
        raise ProtocolError(f"field {name!r}: integer out of range")
    return value


def decode_header(data: bytes | memoryview) -> Message:
    """Parse and validate a header from an untrusted peer."""
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=4096,
            max_bin_len=MAX_HEADER,
            max_array_len=64,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types for malformed input
        raise ProtocolError(f"header is not valid msgpack: {type(e).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError("header is not a map")
    if not all(isinstance(k, str) for k in body):
        raise ProtocolError("header keys must be strings")
    kind = body.pop("t", None)
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    hints, names = _HINTS[cls.TYPE], _FIELDS[cls.TYPE]
    if not body.keys() <= set(names):
        raise ProtocolError(f"{cls.TYPE}: unknown fields {sorted(set(body) - set(names))}")
    values = {name: _check(name, body[name], hints[name]) for name in names if name in body}
    try:
        msg = cls(**values)
    except TypeError:
        raise ProtocolError(f"{cls.TYPE}: missing fields") from None
    _validate(msg)
    return msg


def _validate(msg: Message) -> None:
    """Field rules beyond types: ID sizes, request ids, HAVE bitmap bounds."""
    if isinstance(msg, GetBlock | BlockData | Audit | Proof) and len(msg.block) != 32:
        raise ProtocolError(f"{msg.TYPE}: block IDs are 32 bytes")
    if isinstance(msg, Place | Release) and len(msg.object) != 32:
        raise ProtocolError(f"{msg.TYPE}: object IDs are 32 bytes")
    if isinstance(msg, Request) and msg.id == 0:
        raise ProtocolError(f"{msg.TYPE}: request id 0 is reserved for connection-level errors")
    if isinstance(msg, Proof) and any(len(h) != 32 for h in msg.path):
        raise ProtocolError("proof: path hashes are 32 bytes")
    if isinstance(msg, Place | Release) and any(s > 255 for s in msg.shares):
        raise ProtocolError(f"{msg.TYPE}: share numbers are below 256")
    if isinstance(msg, Publish | Found) and len(msg.record) > 1000:
        raise ProtocolError(f"{msg.TYPE}: a record is at most 1000 bytes")
    if isinstance(msg, Lookup | CircuitOpen | CircuitIncoming) and len(msg.peer) != 32:
        raise ProtocolError(f"{msg.TYPE}: a peer is a 32-byte public key")
    if isinstance(msg, Circuit | CircuitIncoming) and (len(msg.token) != 32 or not 0 < msg.port < 65536):
        raise ProtocolError(f"{msg.TYPE}: a token is 32 bytes and a port in 1..65535")
    if isinstance(msg, Records) and (len(msg.records) > MAX_RECORDS or any(len(r) > 1000 for r in msg.records)):
        raise ProtocolError(f"records: at most {MAX_RECORDS} records of at most 1000 bytes")
    if isinstance(msg, Hello) and msg.path not in ("", *PATHS):
        raise ProtocolError(f"hello: unknown path {msg.path[:20]!r}")
    if isinstance(msg, CloudDocWant) and (len(msg.cloud) != 16 or not 1 <= msg.seq < 2**62):
        raise ProtocolError("cloud_want: a 16-byte cloud ID and a version number from 1 to 2^62 - 1")
    if isinstance(msg, DeleteReceipts) and any(len(r) != 154 for r in msg.receipts):
        raise ProtocolError("delete_receipts: each receipt is 154 bytes")
    if isinstance(msg, BucketHeads) and (
        len(msg.heads) > MAX_BUCKET_HEADS or any(len(h) != BUCKET_HEAD_SIZE for h in msg.heads)
    ):
        raise ProtocolError(f"bucket_heads: at most {MAX_BUCKET_HEADS} heads of {BUCKET_HEAD_SIZE} bytes")
    if isinstance(msg, HaveQuery) and (not msg.objects or len(msg.objects) % 32):
        raise ProtocolError("have_query: objects are 32-byte IDs")
    if isinstance(msg, CatalogWant) and (len(msg.author) != 32 or msg.after >= 1 << 62):
        raise ProtocolError("catalog_want: an author is a 32-byte public key, after a batch number")
    if isinstance(msg, Have) and (
        len(msg.object) != 32 or len(msg.bitmap) > HAVE_PIECE or msg.offset + len(msg.bitmap) > MAX_HAVE_BITMAP
    ):
        raise ProtocolError("have: object ID must be 32 bytes and the bitmap within its limits")
