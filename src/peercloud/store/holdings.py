"""Tables of other peers: who we dial, and what each peer says it holds (its HAVEs) and proved.

A HAVE row is a claim; its `confirmed` bitmap is what audits proved of it, block by block, and
`due_at` orders the auditor's work (an indexed query, not a scan of every claim). Rows are kept
only for objects this node knows, and a peer outside the cloud gets at most OUTSIDER_ROWS of
them, dropped an hour after it went away: announcing made-up objects costs the announcer.
"""

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from peercloud.store.db import Database, placeholders

OUTSIDER_ROWS = 1000  # HAVE rows kept per peer outside the cloud
_COLUMNS = "object_id, peer_id, bitmap, updated_at, confirmed, checked_at, failed_at, pinned, provisional, due_at"


@dataclass(frozen=True)
class Holding:
    """What one peer announced of one object, and how much of that an audit confirmed."""

    peer_id: bytes
    bitmap: bytes
    updated_at: float
    confirmed: bytes
    checked_at: float | None
    failed_at: float | None
    pinned: bool = False
    provisional: bool = False  # an owner's fresh EC shares, kept until placement spread them
    due_at: float = 0.0  # when the auditor should challenge this claim next


@dataclass(frozen=True)
class Claim:
    """(Part of) one HAVE: an object's bitmap piece at byte `offset`, with the holder's flags."""

    object_id: bytes
    bitmap: bytes
    offset: int = 0
    pinned: bool = False
    provisional: bool = False


def _holding(r: Any) -> tuple[bytes, Holding]:
    oid, peer, bitmap, updated, confirmed, checked, failed, pinned, provisional, due = r
    return bytes(oid), Holding(
        bytes(peer),
        bytes(bitmap),
        float(updated),
        bytes(confirmed),
        checked,
        failed,
        bool(pinned),
        bool(provisional),
        float(due),
    )


def _and(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    return (int.from_bytes(a[:n], "big") & int.from_bytes(b[:n], "big")).to_bytes(n, "big")


class HoldingTables(Database):
    """Peers to dial and peers' claims."""

    def add_peer(self, peer_id: bytes, address: str) -> None:
        """Remember a peer to dial (replacing its address)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO peers (peer_id, address, added_at) VALUES (?, ?, ?)"
                " ON CONFLICT(peer_id) DO UPDATE SET address = excluded.address",
                (peer_id, address, time.time()),
            )

    def remove_peer(self, peer_id: bytes) -> bool:
        """Forget a peer and what it held; False when it was not known."""
        with self.transaction() as db:
            gone = db.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,)).rowcount
            db.execute("DELETE FROM holdings WHERE peer_id = ?", (peer_id,))
        return bool(gone)

    def peers(self) -> list[tuple[bytes, str]]:
        """Peers to dial, oldest first."""
        return [(bytes(r[0]), str(r[1])) for r in self._query("SELECT peer_id, address FROM peers ORDER BY added_at")]

    def set_holdings(self, peer_id: bytes, claims: Iterable[Claim], member: bool) -> int:
        """Record a batch of a peer's HAVEs in one transaction; returns how many were kept.

        Claims on objects this node does not know are dropped; a peer outside the cloud
        (`member` False) gets at most OUTSIDER_ROWS rows. Proofs stay for blocks still claimed,
        and a claim naming blocks not proved yet is due for an audit now.
        """
        claims = list(claims)
        ids = list(dict.fromkeys(c.object_id for c in claims))
        now, out = time.time(), []
        with self.transaction(durable=False) as db:  # claims are re-announced on every link
            known = self._known_in(db, ids)
            current: dict[bytes, tuple[bytes, bytes, float]] = {}
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                for oid, bitmap, confirmed, due in db.execute(
                    "SELECT object_id, bitmap, confirmed, due_at FROM holdings"
                    f" WHERE peer_id = ? AND object_id IN ({placeholders(len(part))})",
                    (peer_id, *part),
                ):
                    current[bytes(oid)] = (bytes(bitmap), bytes(confirmed), float(due))
            count = "SELECT COUNT(*) FROM holdings WHERE peer_id = ?"
            rows = 0 if member else db.execute(count, (peer_id,)).fetchone()[0]
            for c in claims:
                if c.object_id not in known:
                    continue
                row = current.get(c.object_id)
                if row is None:
                    if not member and rows >= OUTSIDER_ROWS:
                        continue
                    rows += 1
                old = bytearray(row[0]) if row and c.offset else bytearray()
                if len(old) < c.offset + len(c.bitmap):
                    old.extend(bytes(c.offset + len(c.bitmap) - len(old)))
                old[c.offset : c.offset + len(c.bitmap)] = c.bitmap
                claimed = bytes(old)
                proved = row[1] if row else b""
                # Proofs stay for claimed blocks; beyond this piece they wait for the next pieces.
                confirmed = _and(proved, claimed) + proved[len(claimed) :]
                due = now if row is None or _and(confirmed, claimed) != claimed else row[2]
                current[c.object_id] = (claimed, confirmed, due)
                out.append((peer_id, c.object_id, claimed, now, confirmed, c.pinned, c.provisional, due))
            db.executemany(
                "INSERT INTO holdings (peer_id, object_id, bitmap, updated_at, confirmed, pinned, provisional, due_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(object_id, peer_id) DO UPDATE SET"
                " bitmap = excluded.bitmap, updated_at = excluded.updated_at, confirmed = excluded.confirmed,"
                " pinned = excluded.pinned, provisional = excluded.provisional, due_at = excluded.due_at",
                out,
            )
        return len(out)

    @staticmethod
    def _known_in(db: sqlite3.Connection, ids: list[bytes]) -> set[bytes]:
        """Which of these objects this node knows: the cloud's, recorded here, or with a manifest here."""
        known: set[bytes] = set()
        for sql in (
            "SELECT object_id FROM catalog WHERE object_id IN ({})",
            "SELECT id FROM objects WHERE id IN ({})",
            "SELECT id FROM blocks WHERE id IN ({})",
        ):
            left = [oid for oid in ids if oid not in known]  # most are the cloud's: one query answers
            for start in range(0, len(left), 500):
                part = left[start : start + 500]
                known.update(bytes(r[0]) for r in db.execute(sql.format(placeholders(len(part))), part))
        return known

    def set_audit(self, peer_id: bytes, object_id: bytes, confirmed: bytes, failed: bool, due_at: float) -> None:
        """Record an audit of a peer's claim: the blocks proved so far (or failure), and the next one.

        Not waited on the disk: a result lost to a power cut only means that claim is audited again.
        """
        now = time.time()
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE holdings SET confirmed = ?, checked_at = ?, due_at = ?,"
                " failed_at = CASE WHEN ? THEN ? ELSE NULL END WHERE peer_id = ? AND object_id = ?",
                (confirmed, now, due_at, failed, now, peer_id, object_id),
            )

    def known(self, object_ids: Iterable[bytes]) -> list[bytes]:
        """The objects this node knows (HAVEs for others are not kept)."""
        ids = list(object_ids)
        with self._lock:
            known = self._known_in(self._db, ids)
        return [oid for oid in ids if oid in known]

    def set_due(self, peer_id: bytes, object_id: bytes, due_at: float) -> None:
        """Put off a claim's audit (its holder was busy or the link failed): no spinning on it."""
        with self.transaction(durable=False) as db:
            db.execute(
                "UPDATE holdings SET due_at = ? WHERE peer_id = ? AND object_id = ?", (due_at, peer_id, object_id)
            )

    def holdings(self, object_id: bytes | None = None) -> list[tuple[bytes, Holding]]:
        """(object, holding) for every peer that announced blocks of this object (or of any)."""
        where, args = ("WHERE object_id = ?", (object_id,)) if object_id is not None else ("", ())
        return [_holding(r) for r in self._query(f"SELECT {_COLUMNS} FROM holdings {where}", args)]

    def holdings_of(self, object_ids: list[bytes], span: bool = False) -> dict[bytes, list[Holding]]:
        """Holdings of many objects grouped by object (for a reconcile round).

        `span`: the IDs are a run of consecutive catalog entries, read as one range scan
        rather than one lookup each (several times faster on a large index).
        """
        out: dict[bytes, list[Holding]] = {oid: [] for oid in object_ids}
        if span and object_ids:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM holdings WHERE object_id BETWEEN ? AND ?", (min(object_ids), max(object_ids))
            )
            for r in rows:
                oid, h = _holding(r)
                if oid in out:
                    out[oid].append(h)
            return out
        for start in range(0, len(object_ids), 500):
            part = object_ids[start : start + 500]
            rows = self._query(f"SELECT {_COLUMNS} FROM holdings WHERE object_id IN ({placeholders(len(part))})", part)
            for r in rows:
                oid, h = _holding(r)
                out[oid].append(h)
        return out

    def due_holdings(self, peer_id: bytes, now: float, limit: int) -> list[tuple[bytes, Holding]]:
        """A connected peer's claims whose audit is due, most overdue first (an indexed query)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM holdings WHERE peer_id = ? AND due_at <= ? ORDER BY due_at LIMIT ?",
            (peer_id, now, limit),
        )
        return [_holding(r) for r in rows]

    def claimed(self) -> list[tuple[bytes, bytes, bytes]]:
        """(peer, object, bitmap) of every claim: the light rows a usage count needs."""
        return [
            (bytes(p), bytes(o), bytes(b)) for p, o, b in self._query("SELECT peer_id, object_id, bitmap FROM holdings")
        ]

    def peer_holdings(self, peer_id: bytes, ours: bool = False) -> list[tuple[bytes, bytes]]:
        """(object, bitmap) for everything one peer announced (`ours`: of objects recorded here)."""
        join = "JOIN objects o ON o.id = h.object_id" if ours else ""
        rows = self._query(f"SELECT h.object_id, h.bitmap FROM holdings h {join} WHERE h.peer_id = ?", (peer_id,))
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    def prune_holdings(self, keep: Iterable[bytes], before: float) -> int:
        """Drop claims of peers not in `keep` (members, connected peers) not renewed since `before`."""
        keep = list(keep)
        with self.transaction() as db:
            return int(
                db.execute(
                    f"DELETE FROM holdings WHERE updated_at < ? AND peer_id NOT IN ({placeholders(len(keep))})",
                    (before, *keep),
                ).rowcount
            )
