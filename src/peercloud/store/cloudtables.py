"""Tables of the cloud: its signed document, the invites this admin issued, the catalog of the
cloud's objects, and the blocks this node keeps for the cloud (holds)."""

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from peercloud.store.db import Database, placeholders

_CATALOG = "object_id, class, total_blocks, k, n, size, added_at"
# Version 6: every version of the cloud document this node holds, the chain its current one
# ends (cloud/history.py): to find where two admins' edits forked, and to hand missing versions
# to a member catching up. The `cloud` row stays the current version.
SCHEMA_V6 = """
CREATE TABLE cloud_versions (
    seq INTEGER PRIMARY KEY,
    doc BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class CatalogEntry:
    """An object of the cloud: its class and shape, known to every member."""

    object_id: bytes
    storage_class: str
    total_blocks: int
    k: int
    n: int
    size: int
    added_at: float


def _entry(r: Any) -> CatalogEntry:
    return CatalogEntry(bytes(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]))


def insert_catalog(db: sqlite3.Connection, e: CatalogEntry) -> bool:
    """Insert one entry inside a transaction; the first entry for an object stays. True when new."""
    return bool(
        db.execute(
            f"INSERT OR IGNORE INTO catalog ({_CATALOG}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.object_id, e.storage_class, e.total_blocks, e.k, e.n, e.size, e.added_at),
        ).rowcount
    )


class CloudTables(Database):
    """The cloud document, invites, catalog and holds."""

    def local_only(self) -> list[bytes]:
        """Objects pinned here that the catalog does not list: added before this node was in a cloud."""
        rows = self._query(
            "SELECT p.object_id FROM pins p WHERE NOT EXISTS (SELECT 1 FROM catalog c WHERE c.object_id = p.object_id)"
        )
        return [bytes(r[0]) for r in rows]

    def bring(self, entry: CatalogEntry) -> bool:
        """Offer a pinned object to the cloud in one transaction: its catalog entry, its blocks held
        for the cloud (placement may move them, as after an add in the cloud), its pin gone.
        False when the catalog already listed it."""
        with self.transaction() as db:
            if not insert_catalog(db, entry):
                return False
            db.execute(
                """INSERT OR IGNORE INTO holds (object_id, block_id, provisional)
                   SELECT object_id, block_id, ? FROM object_blocks WHERE object_id = ?""",
                (entry.n > 1, entry.object_id),
            )
            db.execute("DELETE FROM pins WHERE object_id = ?", (entry.object_id,))
        return True

    def cloud_doc(self) -> bytes | None:
        """The signed cloud document this node holds, if it is in a cloud."""
        rows = self._query("SELECT doc FROM cloud WHERE id = 1")
        return bytes(rows[0][0]) if rows else None

    def set_cloud_chain(self, versions: list[tuple[int, bytes]]) -> None:
        """Make these versions (seq, signed bytes; consecutive, the last the current one) the end
        of the chain, dropping any we held at or after the first: one transaction, synced (a
        member must not come back from a power cut on a version it told others it left)."""
        with self.transaction() as db:
            db.execute("DELETE FROM cloud_versions WHERE seq >= ?", (versions[0][0],))
            db.executemany("INSERT INTO cloud_versions (seq, doc) VALUES (?, ?)", versions)
            db.execute("INSERT OR REPLACE INTO cloud (id, doc) VALUES (1, ?)", (versions[-1][1],))

    def add_cloud_versions(self, versions: list[tuple[int, bytes]]) -> None:
        """Versions below the ones we hold (a joiner completing its history); the current one stays."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO cloud_versions (seq, doc) VALUES (?, ?)", versions)

    def cloud_version(self, seq: int) -> bytes | None:
        """One version of the chain we hold, or None."""
        rows = self._query("SELECT doc FROM cloud_versions WHERE seq = ?", (seq,))
        return bytes(rows[0][0]) if rows else None

    def first_cloud_version(self) -> int:
        """The lowest version number we hold (1 once the history is complete; 0 when none)."""
        rows = self._query("SELECT MIN(seq) FROM cloud_versions")
        return int(rows[0][0] or 0)

    def add_invite(self, secret_hash: bytes, expires_at: float | None) -> None:
        """Remember an invite this admin issued (only its hash)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO invites (secret_hash, created_at, expires_at) VALUES (?, ?, ?)",
                (secret_hash, time.time(), expires_at),
            )

    def use_invite(self, secret_hash: bytes, peer_id: bytes, retry: bool) -> str | None:
        """Spend an invite for a peer, atomically; the reason it cannot be used, or None.

        `retry`: the peer is a member already (its first answer was lost), so its own invite
        may be presented again; a removed member cannot come back with it.
        """
        with self.transaction() as db:
            row = db.execute("SELECT expires_at, used_by FROM invites WHERE secret_hash = ?", (secret_hash,)).fetchone()
            if row is None:
                return "this invite was not issued by this admin"
            if row[1] is not None and not (retry and bytes(row[1]) == peer_id):
                return "this invite was already used"
            if row[0] is not None and time.time() > row[0]:
                return "this invite has expired"
            db.execute("UPDATE invites SET used_by = ? WHERE secret_hash = ?", (peer_id, secret_hash))
            return None

    def put_catalog(self, entry: CatalogEntry) -> bool:
        """Record an object of the cloud; the first entry for an object stays. True when new."""
        return bool(self.put_catalog_many([entry]))

    def put_catalog_many(self, entries: Iterable[CatalogEntry]) -> list[CatalogEntry]:
        """Record many entries in one transaction; returns those that were new.

        Not waited on the disk: entries come from members, who send them again (catalog sync).
        """
        with self.transaction(durable=False) as db:
            return [e for e in entries if insert_catalog(db, e)]

    def leave_cloud(self) -> None:
        """Forget the cloud, its catalog and what was held for it, in one transaction."""
        with self.transaction() as db:
            for table in ("cloud", "cloud_versions", "catalog", "holds"):
                db.execute(f"DELETE FROM {table}")

    def catalog(self, object_id: bytes | None = None) -> list[CatalogEntry]:
        """Objects of the cloud (or one of them)."""
        where, args = ("WHERE object_id = ?", (object_id,)) if object_id is not None else ("ORDER BY added_at", ())
        return [_entry(r) for r in self._query(f"SELECT {_CATALOG} FROM catalog {where}", args)]

    def catalog_after(self, after: bytes, limit: int) -> list[CatalogEntry]:
        """Entries in object ID order after `after`: a page for catalog sync and paged scans."""
        rows = self._query(
            f"SELECT {_CATALOG} FROM catalog WHERE object_id > ? ORDER BY object_id LIMIT ?", (after, limit)
        )
        return [_entry(r) for r in rows]

    def catalog_ids_after(self, after: bytes, limit: int) -> list[bytes]:
        """Object IDs of the catalog after `after`, in order: a sweep's cheap first look at a page."""
        rows = self._query(
            "SELECT object_id FROM catalog WHERE object_id > ? ORDER BY object_id LIMIT ?", (after, limit)
        )
        return [bytes(r[0]) for r in rows]

    def catalog_of(self, object_ids: list[bytes]) -> list[CatalogEntry]:
        """The entries of these objects (those the catalog has), in one query per 500."""
        out = []
        for start in range(0, len(object_ids), 500):
            part = object_ids[start : start + 500]
            rows = self._query(f"SELECT {_CATALOG} FROM catalog WHERE object_id IN ({placeholders(len(part))})", part)
            out += [_entry(r) for r in rows]
        return out

    def hold(self, object_id: bytes, block_ids: Iterable[bytes], provisional: bool = False) -> None:
        """Keep these blocks for the cloud (garbage collection spares them).

        Provisional holds are an owner's fresh EC shares, kept until placement has spread them;
        a hold by placement makes the object's holds here plain ones.
        """
        with self.transaction() as db:
            if not provisional:
                db.execute("UPDATE holds SET provisional = 0 WHERE object_id = ?", (object_id,))
            db.executemany(
                "INSERT OR IGNORE INTO holds (object_id, block_id, provisional) VALUES (?, ?, ?)",
                [(object_id, b, provisional) for b in block_ids],
            )

    def release(self, object_id: bytes, block_ids: Iterable[bytes] | None = None) -> None:
        """Stop keeping blocks of an object for the cloud (all of them when None)."""
        with self.transaction() as db:
            if block_ids is None:
                db.execute("DELETE FROM holds WHERE object_id = ?", (object_id,))
            else:
                db.executemany(
                    "DELETE FROM holds WHERE object_id = ? AND block_id = ?", [(object_id, b) for b in block_ids]
                )

    def kept(self, block_ids: Iterable[bytes]) -> set[bytes]:
        """The subset of blocks a pin or a hold still keeps (the rest may be deleted)."""
        out = set()
        for bid in block_ids:
            if self._query(
                """SELECT 1 FROM holds WHERE block_id = ?1
                   UNION ALL SELECT 1 FROM pins WHERE object_id = ?1
                   UNION ALL SELECT 1 FROM object_blocks ob JOIN pins p ON p.object_id = ob.object_id
                   WHERE ob.block_id = ?1 LIMIT 1""",
                (bid,),
            ):
                out.add(bid)
        return out
