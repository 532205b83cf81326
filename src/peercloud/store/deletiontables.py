"""Tables of deletion: this node's receipts for objects it deleted, and the deletes it issued
with the holders' receipts and audit verdicts (`cloud/deletion.py`)."""

import sqlite3
from typing import Any

from peercloud.store.catalogtables import PUT
from peercloud.store.db import Database

DELETED = 1  # a tombstone's status when the blocks went, as in cloud/deletion.py

# Version 8: deletion. `tombstones`: objects this node deleted (or refused to) on a member's
# delete, with its signed receipt, sent again to members that connect. `deletions`: deletes this
# node issued, with the holders and outsiders at that moment and the manifest (to challenge
# former holders); `delete_receipts`: what each holder answered, and whether it still proved a block.
SCHEMA_V8 = """
CREATE TABLE tombstones (
    object_id BLOB PRIMARY KEY,
    at REAL NOT NULL,
    status INTEGER NOT NULL,
    receipt BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE deletions (
    object_id BLOB PRIMARY KEY,
    at REAL NOT NULL,
    holders BLOB NOT NULL,
    outsiders BLOB NOT NULL,
    manifest BLOB,
    other_owners INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE delete_receipts (
    object_id BLOB NOT NULL,
    peer BLOB NOT NULL,
    status INTEGER NOT NULL,
    receipt BLOB NOT NULL,
    kept INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object_id, peer)
) WITHOUT ROWID;
"""


def _keys(blob: bytes) -> list[bytes]:
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]


def _tombstone(db: sqlite3.Connection, object_id: bytes, holder: bytes, at: float, status: int, receipt: bytes) -> None:
    """Keep a tombstone, and this node's receipt with the delete if it issued it (in a transaction)."""
    db.execute(
        "INSERT OR REPLACE INTO tombstones (object_id, at, status, receipt) VALUES (?, ?, ?, ?)",
        (object_id, at, status, receipt),
    )
    if db.execute("SELECT 1 FROM deletions WHERE object_id = ?", (object_id,)).fetchone():
        db.execute(
            "INSERT OR IGNORE INTO delete_receipts (object_id, peer, status, receipt) VALUES (?, ?, ?, ?)",
            (object_id, holder, status, receipt),
        )


class DeletionTables(Database):
    """Tombstones, issued deletes and their receipts."""

    def forget_object(self, object_id: bytes, holder: bytes, at: float, receipt: bytes) -> list[bytes]:
        """Drop an object's record, pin and holds, and keep the tombstone of its deletion with this
        node's receipt (`holder` is our key), in one synced transaction; its blocks (for the caller
        to delete those nothing else keeps). A cut before they are gone leaves the tombstone and the
        manifest's row: `unfinished_deletions` names the object again."""
        with self.transaction() as db:
            blocks = [
                bytes(r[0]) for r in db.execute("SELECT block_id FROM object_blocks WHERE object_id = ?", (object_id,))
            ]
            for table, column in (
                ("pins", "object_id"),
                ("holds", "object_id"),
                ("object_blocks", "object_id"),
                ("objects", "id"),
            ):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (object_id,))
            _tombstone(db, object_id, holder, at, DELETED, receipt)
        return blocks

    def add_tombstone(self, object_id: bytes, holder: bytes, at: float, status: int, receipt: bytes) -> None:
        """Remember what this node did with a deleted object, and its receipt (synced)."""
        with self.transaction() as db:
            _tombstone(db, object_id, holder, at, status, receipt)

    def unfinished_deletions(self) -> list[bytes]:
        """Objects a delete took out of the catalog (a removal or an erasure, not an owner's
        departure) that a crash kept this node from finishing: still recorded or stored here with
        no tombstone, or with a tombstone of their deletion (no record) while the manifest's block
        row is still there. An object recorded again after its tombstone (a get) is left alone."""
        rows = self._query(
            f"""SELECT d.object_id FROM (
                    SELECT object_id FROM catalog_entries WHERE kind != {PUT}
                    UNION SELECT object_id FROM catalog_erasures) d
                WHERE NOT EXISTS (SELECT 1 FROM catalog c WHERE c.object_id = d.object_id)
                  AND CASE WHEN EXISTS (SELECT 1 FROM tombstones t WHERE t.object_id = d.object_id)
                      THEN EXISTS (SELECT 1 FROM tombstones t WHERE t.object_id = d.object_id AND t.status = {DELETED})
                           AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.id = d.object_id)
                           AND EXISTS (SELECT 1 FROM blocks b WHERE b.id = d.object_id)
                      ELSE EXISTS (SELECT 1 FROM objects o WHERE o.id = d.object_id)
                           OR EXISTS (SELECT 1 FROM blocks b WHERE b.id = d.object_id)
                      END"""
        )
        return [bytes(r[0]) for r in rows]

    def tombstone_receipts(self) -> list[bytes]:
        """Every receipt this node still hands to members that connect."""
        return [bytes(r[0]) for r in self._query("SELECT receipt FROM tombstones ORDER BY at")]

    def tombstone(self, object_id: bytes) -> int | None:
        """What this node did with a deleted object (DELETED or REFUSED), or None."""
        rows = self._query("SELECT status FROM tombstones WHERE object_id = ?", (object_id,))
        return int(rows[0][0]) if rows else None

    def add_deletion(
        self,
        object_id: bytes,
        at: float,
        holders: list[bytes],
        outsiders: list[bytes],
        manifest: bytes | None,
        others: int,
    ) -> None:
        """Remember a delete this node issued, with who held the object then (synced)."""
        with self.transaction() as db:
            db.execute(
                """INSERT OR REPLACE INTO deletions (object_id, at, holders, outsiders, manifest, other_owners)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (object_id, at, b"".join(holders), b"".join(outsiders), manifest, others),
            )
            db.execute("DELETE FROM delete_receipts WHERE object_id = ?", (object_id,))

    def deletion(self, object_id: bytes) -> tuple[float, list[bytes], list[bytes], bytes | None, int] | None:
        """A delete this node issued: (time, holders, outsiders, manifest, other owners), or None."""
        rows = self._query(
            "SELECT at, holders, outsiders, manifest, other_owners FROM deletions WHERE object_id = ?", (object_id,)
        )
        if not rows:
            return None
        at, holders, outsiders, manifest, others = rows[0]
        return (
            float(at),
            _keys(bytes(holders)),
            _keys(bytes(outsiders)),
            bytes(manifest) if manifest else None,
            int(others),
        )

    def deletions_held_by(self, peer: bytes, limit: int) -> list[bytes]:
        """The newest deletes this node issued (those with a manifest to challenge) that `peer` held."""
        rows = self._query("SELECT object_id, holders FROM deletions WHERE manifest IS NOT NULL ORDER BY at DESC")
        return [bytes(r[0]) for r in rows if peer in _keys(bytes(r[1]))][:limit]

    def add_receipt(self, object_id: bytes, peer: bytes, status: int, receipt: bytes) -> bool:
        """Keep a holder's receipt for a delete this node issued; False when there is none or it
        was known (not waited on the disk: holders send theirs again on every link)."""
        with self.transaction(durable=False) as db:
            if not db.execute("SELECT 1 FROM deletions WHERE object_id = ?", (object_id,)).fetchone():
                return False
            return bool(
                db.execute(
                    """INSERT INTO delete_receipts (object_id, peer, status, receipt) VALUES (?, ?, ?, ?)
                       ON CONFLICT (object_id, peer) DO UPDATE SET status = excluded.status,
                         receipt = excluded.receipt WHERE delete_receipts.status = 0""",
                    (object_id, peer, status, receipt),
                ).rowcount
            )

    def receipts(self, object_id: bytes) -> list[tuple[bytes, int, bool]]:
        """(holder, status, still proved a block since) for a delete this node issued."""
        rows: list[Any] = self._query(
            "SELECT peer, status, kept FROM delete_receipts WHERE object_id = ?", (object_id,)
        )
        return [(bytes(r[0]), int(r[1]), bool(r[2])) for r in rows]

    def mark_kept(self, object_id: bytes, peer: bytes) -> None:
        """A former holder still proved a block of a deleted object."""
        with self.transaction() as db:
            db.execute(
                """INSERT INTO delete_receipts (object_id, peer, status, receipt, kept) VALUES (?, ?, 0, x'', 1)
                   ON CONFLICT (object_id, peer) DO UPDATE SET kept = 1""",
                (object_id, peer),
            )

    def prune_deletions(self, before: float) -> int:
        """Drop tombstones older than `before`, and issued deletes every holder answered before it."""
        with self.transaction() as db:
            gone = db.execute("DELETE FROM tombstones WHERE at < ?", (before,)).rowcount
            for oid, holders in db.execute(
                "SELECT object_id, holders FROM deletions WHERE at < ?", (before,)
            ).fetchall():
                answered = {
                    bytes(r[0]) for r in db.execute("SELECT peer FROM delete_receipts WHERE object_id = ?", (oid,))
                }
                if set(_keys(bytes(holders))) <= answered:
                    db.execute("DELETE FROM deletions WHERE object_id = ?", (oid,))
                    db.execute("DELETE FROM delete_receipts WHERE object_id = ?", (oid,))
                    gone += 1
        return int(gone)
