"""JSON shapes shared by the REST API and the CLI's --json, built from node objects."""

from typing import TYPE_CHECKING, Any

from peercloud.cloud.classes import StorageClass
from peercloud.cloud.document import CloudDoc
from peercloud.cloud.ledger import Health, ObjectStatus, bit_count
from peercloud.content.caps import VerifyCap
from peercloud.identity import PeerId
from peercloud.node.fsck import FsckReport
from peercloud.node.ingest import AddResult
from peercloud.node.local import ObjectInfo
from peercloud.store.index import Index, ObjectRecord
from peercloud.swarm.peers import PeerInfo

if TYPE_CHECKING:
    from peercloud.node.service import NodeStatus  # the service imports this module


def object_row(r: ObjectRecord) -> dict[str, Any]:
    """One line of `ls`."""
    return {
        "object_id": r.object_id.hex(),
        "name": r.name,
        "size": r.size,
        "class": r.storage_class,
        "local_percent": round(r.local_percent, 2),
        "added_at": r.added_at,
        "readable": r.read_key is not None,
    }


def add_result(result: AddResult) -> dict[str, Any]:
    """What `add` prints."""
    return result.as_json()


def info(i: ObjectInfo) -> dict[str, Any]:
    """What `info` prints: the manifest summary and what is known here."""
    m, r = i.manifest, i.record
    return {
        "object_id": m.object_id.hex(),
        "verify_cap": str(VerifyCap(m.object_id)),
        "read_cap": str(i.read_cap) if i.read_cap else None,
        "name": r.name if r else None,
        "class": r.storage_class if r else None,
        "size": m.size,
        "segment_size": m.segment_size,
        "segments": m.segment_count,
        "cipher": m.cipher,
        "coding": {"k": m.coding.k, "n": m.coding.n},
        "blocks": len(m.blocks()),
        "leaf_size": m.leaf_size,
        "manifest_bytes": len(m.encode()),
        "stored_bytes": m.stored_size,
        "local_percent": round(r.local_percent, 2) if r else None,
    }


def object_status(status: ObjectStatus, record: ObjectRecord | None, note: str = "") -> dict[str, Any]:
    """What `status OBJ` prints: every holder, its claimed and proved blocks, the health figures."""
    total = status.total_blocks
    r = status.redundancy()
    cls = status.storage_class
    return {
        "object_id": status.object_id.hex(),
        "name": record.name if record else None,
        "class": cls.name if cls else record.storage_class if record else None,
        "size": status.size,
        "coding": {"k": status.k, "n": status.n},
        "total_blocks": total,
        "local_percent": round(status.local_percent, 2),
        "complete_copies": status.complete_copies,
        "distributed_copies": round(status.distributed_copies, 3),
        "health": r.health.value,
        "redundancy": {
            "available": r.available,
            "target": r.target,
            "needed": r.needed,
            "crowded": r.crowded,
            "can_lose": r.can_lose,
            "tolerance": r.tolerance,
        },
        "note": "; ".join(x for x in (note, r.note) if x),
        "holders": [
            {
                "peer_id": h.peer_id,
                "percent": round(h.percent(total), 2),
                "online": h.online,
                "self": h.is_self,
                "member": h.member,
                "blocks": list(h.blocks),
                "confirmed": list(h.confirmed),
                "failed_audit": h.failed_audit,
                "pinned": h.pinned,
                "updated_at": h.updated_at,
                "checked_at": h.checked_at,
            }
            for h in status.holders
        ],
    }


def summary(rows: list[tuple[ObjectStatus, ObjectRecord | None]]) -> dict[str, Any]:
    """What `status` prints without an object: every object's health, and counts by health."""
    objects = []
    counts = {h.value: 0 for h in Health}
    for status, record in rows:
        r = status.redundancy()
        counts[r.health.value] += 1
        objects.append(
            {
                "object_id": status.object_id.hex(),
                "name": record.name if record else None,
                "class": status.storage_class.name if status.storage_class else None,
                "size": status.size,
                "health": r.health.value,
                "available": r.available,
                "target": r.target,
                "needed": r.needed,
                "complete_copies": status.complete_copies,
                "distributed_copies": round(status.distributed_copies, 3),
                "local_percent": round(status.local_percent, 2),
                "holders": len(status.holders),
            }
        )
    return {"counts": counts, "objects": objects}


def storage_class(c: StorageClass) -> dict[str, Any]:
    """One line of `class ls`."""
    return {
        "name": c.name,
        "replicas": c.replicas or None,
        "max": c.maximum if c.replicas else None,
        "k": c.k or None,
        "m": c.m if c.k else None,
        "spread": c.spread or None,
        "grace": c.grace,
        "overhead": round(c.overhead, 3),
        "describe": c.describe(),
    }


def cloud(doc: CloudDoc, me: PeerId, online: set[PeerId], used: dict[bytes, int]) -> dict[str, Any]:
    """What `cloud members` prints (and the rest of the document)."""
    return {
        "cloud_id": doc.text_id,
        "name": doc.name,
        "version": doc.seq,
        "members": [
            {
                "peer_id": str(x.peer_id),
                "role": x.role,
                "self": x.peer_id == me,
                "online": x.peer_id == me or x.peer_id in online,
                "offer": x.offer,
                "used": used.get(x.peer_id.public_key, 0),
                "tags": dict(x.tags),
                "addresses": list(x.addresses),
            }
            for x in doc.members
        ],
        "classes": [storage_class(c) for c in doc.classes],
    }


def peers(infos: list[PeerInfo], index: Index) -> list[dict[str, Any]]:
    """What `peers` prints, including how many blocks of our objects each peer holds."""
    rows = []
    for p in infos:
        held = sum(bit_count(bitmap) for _, bitmap in index.peer_holdings(p.peer_id.public_key, ours=True))
        rows.append(
            {
                "peer_id": str(p.peer_id),
                "address": p.address,
                "connected": p.connected,
                "path": p.path,
                "via": str(p.via) if p.via is not None else None,
                "rtt_ms": round(p.rtt * 1000, 2) if p.rtt is not None else None,
                "rate_in": round(p.rate_in),
                "rate_out": round(p.rate_out),
                "bytes_in": p.bytes_in,
                "bytes_out": p.bytes_out,
                "since": p.since,
                "blocks_held": held,
                "banned": p.banned_until is not None,
            }
        )
    return rows


def fsck(report: FsckReport, records: list[ObjectRecord]) -> dict[str, Any]:
    """What `fsck` prints."""
    names = {r.object_id: r.name for r in records}
    return {
        "ok": not report.damaged,
        "blocks_checked": report.blocks_checked,
        "bytes_checked": report.bytes_checked,
        "corrupt": [b.hex() for b in report.corrupt],
        "missing": [b.hex() for b in report.missing],
        "strays_removed": report.strays_removed,
        "damaged_objects": [
            {"object_id": oid.hex(), "name": names.get(oid, name), "recoverable": rec}
            for oid, name, rec in report.damaged_objects
        ],
    }


def node_status(s: "NodeStatus") -> dict[str, Any]:
    """What `status --node` prints."""
    return {
        "peer_id": s.peer_id,
        "version": s.version,
        "uptime": round(s.uptime, 1),
        "listen": s.listen,
        "peers_connected": s.peers_connected,
        "peers_known": s.peers_known,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "objects": s.objects,
        "stored_bytes": s.stored_bytes,
        "reachable": s.reachable,
    }
