"""Signed peer records: where a peer can be reached, in its own words (pure, no I/O).

A record is signed by the peer's Ed25519 identity, so anyone may carry it (members, directories,
later the Mainline DHT) and nobody can alter it. Its sequence number only grows: a receiver
keeps the newest it verified and refuses older ones, so a replayed record cannot send traffic to
an address the peer left. It expires, so a record of a peer that vanished stops being used. At
most `MAX_RECORD` bytes (1000), the size of a BEP 44 mutable item's value.

Wire form (docs/formats.md): msgpack `[body, signature]`, where `body` is the msgpack map
`{"v": 1, "k": public key, "s": seq, "e": expires (unix s), "a": [[kind, address], ...]}` and the
signature covers `RECORD_CONTEXT + body`.
"""

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack

from peercloud.errors import IntegrityError
from peercloud.identity import Identity, PeerId

MAX_RECORD = 1000
MAX_CANDIDATES = 16
MAX_ADDRESS = 120
RECORD_TTL = 3600  # seconds a new record is valid; it is re-signed well before
MAX_LIFETIME = 24 * 3600  # a receiver refuses records claiming to be valid longer than this
CLOCK_SKEW = 300  # seconds of disagreement between clocks a receiver tolerates
RECORD_CONTEXT = b"peercloud peer record v1\x00"
VERSION = 1


class Kind(StrEnum):
    """How a candidate address was learned; dialers try them in this order of preference."""

    LAN = "lan"  # an address of one of the peer's own interfaces
    PUBLIC = "public"  # the address a directory or relay saw it come from
    MAPPED = "mapped"  # a port its router forwards to it (UPnP IGD)
    RELAY = "relay"  # a relay holding a reservation for it: RELAYPEERID@HOST:PORT


@dataclass(frozen=True)
class Candidate:
    """One way to reach a peer."""

    kind: Kind
    address: str


class RecordError(IntegrityError):
    """A record was refused: malformed, forged, expired, oversized, or older than one we have."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # forged | expired | oversized | replayed | malformed


@dataclass(frozen=True)
class PeerRecord:
    """A verified record (build one with `sign`, read one with `verify`)."""

    peer_id: PeerId
    seq: int
    expires_at: int
    candidates: tuple[Candidate, ...]
    raw: bytes  # the signed bytes, passed on unchanged

    @classmethod
    def sign(
        cls, identity: Identity, seq: int, candidates: list[Candidate], now: float | None = None, ttl: int = RECORD_TTL
    ) -> "PeerRecord":
        """Sign a new record; candidates that would not fit in MAX_RECORD are dropped from the end."""
        expires = int(now if now is not None else time.time()) + ttl
        kept = list(candidates[:MAX_CANDIDATES])
        while True:
            body = _body(identity.peer_id, seq, expires, kept)
            raw = msgpack.packb([body, identity.sign(RECORD_CONTEXT + body)], use_bin_type=True)
            if len(raw) <= MAX_RECORD or not kept:
                return cls(identity.peer_id, seq, expires, tuple(kept), raw)
            kept.pop()


def _body(peer: PeerId, seq: int, expires: int, candidates: list[Candidate]) -> bytes:
    entries = [[c.kind.value, c.address] for c in candidates]
    body = {"v": VERSION, "k": peer.public_key, "s": seq, "e": expires, "a": entries}
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def verify(raw: bytes, now: float | None = None, newer_than: int = -1) -> PeerRecord:
    """Check a record from anyone: size, shape, signature, expiry, and a seq above `newer_than`."""
    now = time.time() if now is None else now
    if len(raw) > MAX_RECORD:
        raise RecordError(f"peer record of {len(raw)} bytes is over the {MAX_RECORD}-byte limit", "oversized")
    try:
        outer = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_RECORD, max_str_len=MAX_RECORD)
        body_raw, signature = outer
        if not isinstance(body_raw, bytes) or not isinstance(signature, bytes):
            raise TypeError("record parts are bytes")
        body: Any = msgpack.unpackb(body_raw, raw=False, strict_map_key=True)
        record = _parse(body, raw)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise RecordError(f"malformed peer record: {e}", "malformed") from None
    if not record.peer_id.verify(signature, RECORD_CONTEXT + body_raw):
        raise RecordError(f"peer record for {record.peer_id.short()} has a bad signature", "forged")
    if record.expires_at <= now - CLOCK_SKEW:
        raise RecordError(f"peer record for {record.peer_id.short()} has expired", "expired")
    if record.expires_at > now + MAX_LIFETIME + CLOCK_SKEW:
        raise RecordError(f"peer record for {record.peer_id.short()} claims too long a life", "malformed")
    if record.seq <= newer_than:
        raise RecordError(
            f"peer record for {record.peer_id.short()} is not newer (seq {record.seq} <= {newer_than})", "replayed"
        )
    return record


def _parse(body: Any, raw: bytes) -> PeerRecord:
    if not isinstance(body, dict) or set(body) != {"v", "k", "s", "e", "a"}:
        raise ValueError("unexpected fields")
    if body["v"] != VERSION:
        raise ValueError(f"version {body['v']!r} is not {VERSION}")
    key, seq, expires, entries = body["k"], body["s"], body["e"], body["a"]
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("public key is 32 bytes")
    if not isinstance(seq, int) or not isinstance(expires, int) or seq < 0 or expires < 0:
        raise ValueError("seq and expiry are non-negative integers")
    if not isinstance(entries, list) or len(entries) > MAX_CANDIDATES:
        raise ValueError(f"at most {MAX_CANDIDATES} candidates")
    candidates = []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError("a candidate is [kind, address]")
        kind, address = entry
        if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS:
            raise ValueError("candidate address is a short string")
        candidates.append(Candidate(Kind(kind), address))
    return PeerRecord(PeerId(key), seq, expires, tuple(candidates), raw)
