"""Deletion receipts and reports: what each holder did with a deleted object, signed, and the
honest summary the deleter shows.

A delete is an entry in a log (`cloud/catalog.py`: an owner's `remove`, an admin's `erase`):
signed, numbered (so it cannot be replayed out of place), durable, and caught up by every
member that was away, before its HAVEs count. Each holder that sees an object leave the
catalog by a delete answers with a receipt, signed by its own key: `deleted` (its blocks are
gone) or `refused` (it keeps a copy it pinned by hand, as its owner configured). The deleter
then challenges holders that said `deleted`: one that still proves a block is shown as `kept`.

Pure functions, no I/O; `node/deletion.py` drives it.
"""

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from peercloud.errors import FormatError
from peercloud.identity import Identity, PeerId

DELETED, REFUSED = 1, 2
STATUS = {DELETED: "deleted", REFUSED: "refused"}
_SIGN_CONTEXT = b"peercloud delete receipt v1\x00"
_BODY = struct.Struct(">B16s32s32sBd")  # version, cloud, object, holder, status, time
_SIGNATURE = 64
SIZE = _BODY.size + _SIGNATURE
VERSION = 1


def peek(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(cloud, object, holder) of a receipt, read before its signature is checked: one that
    cannot count is dropped without that cost."""
    if len(data) != SIZE:
        raise FormatError("delete receipt has the wrong size")
    _, cloud, obj, holder, _, _ = _BODY.unpack_from(data)
    return cloud, obj, holder


@dataclass(frozen=True)
class Receipt:
    """A holder's signed word on a deleted object: what it did, and when."""

    cloud_id: bytes
    object_id: bytes
    holder: PeerId
    status: int
    at: float
    signature: bytes

    @classmethod
    def sign(cls, identity: Identity, cloud_id: bytes, object_id: bytes, status: int, at: float) -> "Receipt":
        """This node's receipt for a deleted object."""
        body = _BODY.pack(VERSION, cloud_id, object_id, identity.peer_id.public_key, status, at)
        return cls(cloud_id, object_id, identity.peer_id, status, at, identity.sign(_SIGN_CONTEXT + body))

    def encode(self) -> bytes:
        """The receipt as it travels and is kept (SIZE = 154 bytes)."""
        body = _BODY.pack(VERSION, self.cloud_id, self.object_id, self.holder.public_key, self.status, self.at)
        return body + self.signature

    @classmethod
    def decode(cls, data: bytes) -> "Receipt":
        """Parse and check a receipt from an untrusted peer."""
        if len(data) != SIZE:
            raise FormatError("delete receipt has the wrong size")
        version, cloud, obj, holder, status, at = _BODY.unpack_from(data)
        if version != VERSION or status not in STATUS or not math.isfinite(at):
            raise FormatError("delete receipt malformed")
        peer = PeerId(holder)
        if not peer.verify(data[_BODY.size :], _SIGN_CONTEXT + data[: _BODY.size]):
            raise FormatError("delete receipt signature does not match: it was forged or altered")
        return cls(cloud, obj, peer, status, at, data[_BODY.size :])


@dataclass(frozen=True)
class Report:
    """Where a deleted object's copies stand, as the deleter sees them (full peer IDs)."""

    object_id: bytes
    deleted_at: float
    deleted: tuple[PeerId, ...]  # receipted, and no longer proves a block
    pending: tuple[PeerId, ...]  # held it, no receipt yet (offline, or slow)
    refused: tuple[PeerId, ...]  # keeps a copy it pinned by hand, and said so
    kept: tuple[PeerId, ...]  # said deleted, or said nothing, yet still proves a block
    outside_control: tuple[PeerId, ...]  # not members: announced or fetched it, no one can make them delete
    other_owners: int = 0  # owners whose entries remain: the object stays the cloud's for them

    def as_json(self) -> dict[str, object]:
        """The report as `rm --json` and `status OBJ` give it."""
        return {
            "object_id": self.object_id.hex(),
            "deleted_at": self.deleted_at,
            "deleted": [str(p) for p in self.deleted],
            "pending": [str(p) for p in self.pending],
            "refused": [str(p) for p in self.refused],
            "kept": [str(p) for p in self.kept],
            "outside_control": [str(p) for p in self.outside_control],
            "other_owners": self.other_owners,
        }


def report(
    object_id: bytes,
    deleted_at: float,
    holders: list[PeerId],
    outsiders: list[PeerId],
    receipts: dict[PeerId, int],
    kept: set[PeerId],
    other_owners: int = 0,
) -> Report:
    """Sort the holders at deletion time by what each answered and what audits found since."""

    def pick(pred: Callable[[PeerId], bool]) -> tuple[PeerId, ...]:
        return tuple(sorted((p for p in holders if pred(p)), key=lambda p: p.public_key))

    return Report(
        object_id,
        deleted_at,
        deleted=pick(lambda p: receipts.get(p) == DELETED and p not in kept),
        pending=pick(lambda p: p not in receipts and p not in kept),
        refused=pick(lambda p: receipts.get(p) == REFUSED),
        kept=pick(lambda p: p in kept and receipts.get(p) != REFUSED),
        outside_control=tuple(sorted(outsiders, key=lambda p: p.public_key)),
        other_owners=other_owners,
    )
