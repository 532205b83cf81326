"""The node's SQLite index (WAL): which blocks are stored, which objects exist, what is pinned.

A row for a block is only ever inserted after its file is durable, so the index never names a
block that is missing or partial after a crash. One connection is shared by the node's worker
threads behind a lock; SQLite transactions make each change all-or-nothing.
"""

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peercloud.store.buckettables import SCHEMA_V9, BucketTables, KeyRow
from peercloud.store.catalogtables import SCHEMA_V7, SCHEMA_V10, CatalogEntry, CatalogTables, OwnedEntry, put_entries
from peercloud.store.cloudtables import SCHEMA_V6, CloudTables
from peercloud.store.db import placeholders
from peercloud.store.deletiontables import SCHEMA_V8, DeletionTables
from peercloud.store.holdings import Claim, Holding, HoldingTables
from peercloud.store.records import SCHEMA_V5, RecordTables

__all__ = [
    "SCHEMA_VERSION",
    "CatalogEntry",
    "Claim",
    "Holding",
    "Index",
    "InventoryItem",
    "KeyRow",
    "ObjectRecord",
    "OwnedEntry",
]
SCHEMA_VERSION = 10
_SCHEMA = """
CREATE TABLE blocks (
    id BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE objects (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    class TEXT NOT NULL,
    added_at REAL NOT NULL,
    read_key BLOB
) WITHOUT ROWID;
CREATE TABLE object_blocks (
    object_id BLOB NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    segment INTEGER NOT NULL,
    share INTEGER NOT NULL,
    block_id BLOB NOT NULL,
    PRIMARY KEY (object_id, segment, share)
) WITHOUT ROWID;
CREATE INDEX object_blocks_by_block ON object_blocks(block_id);
CREATE TABLE pins (object_id BLOB PRIMARY KEY) WITHOUT ROWID;
"""
# Version 2: peers this node dials, and what each peer said it holds (its HAVE bitmaps).
_SCHEMA_V2 = """
CREATE TABLE peers (
    peer_id BLOB PRIMARY KEY,
    address TEXT NOT NULL,
    added_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE holdings (
    peer_id BLOB NOT NULL,
    object_id BLOB NOT NULL,
    bitmap BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (peer_id, object_id)
) WITHOUT ROWID;
CREATE INDEX holdings_by_object ON holdings(object_id);
"""
# Version 3: the cloud. Its signed document, the invites this admin issued, the objects of the
# cloud with their class, the blocks this node keeps for the cloud (holds, released on request),
# and which claimed blocks of each peer passed an audit.
_SCHEMA_V3 = """
CREATE TABLE cloud (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    doc BLOB NOT NULL
);
CREATE TABLE invites (
    secret_hash BLOB PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL,
    used_by BLOB
) WITHOUT ROWID;
CREATE TABLE catalog (
    object_id BLOB PRIMARY KEY,
    class TEXT NOT NULL,
    total_blocks INTEGER NOT NULL,
    k INTEGER NOT NULL,
    n INTEGER NOT NULL,
    size INTEGER NOT NULL,
    added_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE holds (
    object_id BLOB NOT NULL,
    block_id BLOB NOT NULL,
    PRIMARY KEY (object_id, block_id)
) WITHOUT ROWID;
CREATE INDEX holds_by_block ON holds(block_id);
ALTER TABLE holdings ADD COLUMN confirmed BLOB NOT NULL DEFAULT x'';
ALTER TABLE holdings ADD COLUMN checked_at REAL;
ALTER TABLE holdings ADD COLUMN failed_at REAL;
ALTER TABLE holdings ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
"""
# Version 4: provisional holds (an owner's fresh EC shares) and claims, and when each claim is
# next due for an audit (indexed, so the auditor never scans every claim). Claims are keyed by
# object first: rounds read them by object ranges, and one index less makes 100,000 HAVEs cheaper.
_SCHEMA_V4 = """
ALTER TABLE holds ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0;
CREATE TABLE holdings4 (
    object_id BLOB NOT NULL,
    peer_id BLOB NOT NULL,
    bitmap BLOB NOT NULL,
    updated_at REAL NOT NULL,
    confirmed BLOB NOT NULL DEFAULT x'',
    checked_at REAL,
    failed_at REAL,
    pinned INTEGER NOT NULL DEFAULT 0,
    provisional INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (object_id, peer_id)
) WITHOUT ROWID;
INSERT INTO holdings4 (object_id, peer_id, bitmap, updated_at, confirmed, checked_at, failed_at, pinned)
    SELECT object_id, peer_id, bitmap, updated_at, confirmed, checked_at, failed_at, pinned FROM holdings;
DROP TABLE holdings;
ALTER TABLE holdings4 RENAME TO holdings;
CREATE INDEX holdings_due ON holdings(peer_id, due_at);
"""


@dataclass(frozen=True)
class InventoryItem:
    """What this node announces of one object: its HAVE bitmap and flags."""

    object_id: bytes
    bitmap: bytes
    pinned: bool
    provisional: bool


@dataclass(frozen=True)
class ObjectRecord:
    """What this node knows about one object besides its manifest."""

    object_id: bytes
    name: str
    size: int
    storage_class: str
    added_at: float
    read_key: bytes | None
    local_blocks: int = 0
    total_blocks: int = 0

    @property
    def local_percent(self) -> float:
        """Share of the object's data blocks this node keeps: the one "local %" that ls, info and
        status show (the ledger's own holding, `ledger_view.holding_here`)."""
        return 100.0 * self.local_blocks / self.total_blocks if self.total_blocks else 100.0


# Data blocks (the manifest's own row has segment -1) stored here and kept: for the cloud's
# objects a block a get left behind as a cache is no copy, unless this node pinned the object.
_OBJECT_COLUMNS = """
    o.id, o.name, o.size, o.class, o.added_at, o.read_key,
    (SELECT COUNT(*) FROM object_blocks ob JOIN blocks b ON b.id = ob.block_id
      WHERE ob.object_id = o.id AND ob.segment >= 0
        AND (EXISTS (SELECT 1 FROM pins p WHERE p.object_id = o.id)
             OR NOT EXISTS (SELECT 1 FROM catalog c WHERE c.object_id = o.id)
             OR EXISTS (SELECT 1 FROM holds h WHERE h.object_id = o.id AND h.block_id = ob.block_id))),
    (SELECT COUNT(*) FROM object_blocks ob WHERE ob.object_id = o.id AND ob.segment >= 0)
"""


class Index(HoldingTables, CatalogTables, BucketTables, DeletionTables, CloudTables, RecordTables):
    """The node's index: every table, each concern in its own module, over one connection."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.migrate(
            path,
            [
                _SCHEMA,
                _SCHEMA_V2,
                _SCHEMA_V3,
                _SCHEMA_V4,
                SCHEMA_V5,
                SCHEMA_V6,
                SCHEMA_V7,
                SCHEMA_V8,
                SCHEMA_V9,
                SCHEMA_V10,
            ],
        )

    # -- blocks

    def has_block(self, block_id: bytes) -> bool:
        """True when the block is stored (its file durable) on this node."""
        return bool(self._query("SELECT 1 FROM blocks WHERE id = ?", (block_id,)))

    def add_blocks(self, blocks: Iterable[tuple[bytes, int]]) -> None:
        """Record durable block files (id, size) in one transaction."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO blocks (id, size, stored_at) VALUES (?, ?, ?)",
                [(bid, size, now) for bid, size in blocks],
            )

    def remove_blocks(self, block_ids: Iterable[bytes]) -> None:
        """Forget blocks whose files were deleted or quarantined."""
        with self.transaction() as db:
            db.executemany("DELETE FROM blocks WHERE id = ?", [(b,) for b in block_ids])

    def used_bytes(self) -> int:
        """Bytes of all stored blocks, for the quota."""
        return int(self._query("SELECT COALESCE(SUM(size), 0) FROM blocks")[0][0])

    def block_ids(self) -> list[tuple[bytes, int]]:
        """Every stored block with its size."""
        return [(bytes(r[0]), int(r[1])) for r in self._query("SELECT id, size FROM blocks")]

    def unreferenced_blocks(self) -> list[bytes]:
        """Stored blocks that belong to no pinned object: what garbage collection may delete."""
        rows = self._query(
            """SELECT b.id FROM blocks b WHERE NOT EXISTS (
                   SELECT 1 FROM object_blocks ob JOIN pins p ON p.object_id = ob.object_id
                   WHERE ob.block_id = b.id)
               AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.object_id = b.id)
               AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.block_id = b.id)"""
        )
        return [bytes(r[0]) for r in rows]

    def referenced(self, block_ids: Iterable[bytes]) -> set[bytes]:
        """The subset of `block_ids` that some known object (or manifest) uses."""
        out = set()
        for bid in block_ids:
            if self._query(
                "SELECT 1 FROM object_blocks WHERE block_id = ? UNION SELECT 1 FROM objects WHERE id = ?",
                (bid, bid),
            ):
                out.add(bid)
        return out

    # -- objects

    def add_object(
        self,
        record: ObjectRecord,
        blocks: Iterable[tuple[int, int, bytes]],
        pin: bool,
        catalog: OwnedEntry | None = None,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Record an object, its (segment, share, block) list and a pin, atomically.

        With `catalog` (this node's own entry, signed into its log afterwards), the object is the
        cloud's instead: listed in the catalog and its blocks held for the cloud (which may
        release them), in the same transaction. `also` writes more in it (a bucket's name for it).
        """
        blocks = list(blocks)
        with self.transaction() as db:
            db.execute(
                """INSERT INTO objects (id, name, size, class, added_at, read_key) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET name = excluded.name, class = excluded.class,
                   read_key = COALESCE(excluded.read_key, objects.read_key)""",
                (record.object_id, record.name, record.size, record.storage_class, record.added_at, record.read_key),
            )
            db.executemany(
                "INSERT OR IGNORE INTO object_blocks (object_id, segment, share, block_id) VALUES (?, ?, ?, ?)",
                [(record.object_id, seg, share, bid) for seg, share, bid in blocks],
            )
            if pin:
                db.execute("INSERT OR IGNORE INTO pins (object_id) VALUES (?)", (record.object_id,))
            if catalog is not None:
                # An owner's EC shares are provisional: they go once placement spread them.
                db.executemany(
                    "INSERT OR IGNORE INTO holds (object_id, block_id, provisional) VALUES (?, ?, ?)",
                    [(record.object_id, bid, catalog.n > 1) for _, _, bid in blocks],
                )
                put_entries(db, [catalog], logged=False)
            if also is not None:
                also(db)

    def _record(self, row: Any) -> ObjectRecord:
        oid, name, size, cls, added, key, local, total = row
        return ObjectRecord(
            bytes(oid),
            str(name),
            int(size),
            str(cls),
            float(added),
            bytes(key) if key is not None else None,
            int(local),
            int(total),
        )

    def objects(self) -> list[ObjectRecord]:
        """All objects this node knows, oldest first, with how much of each is local."""
        rows = self._query(f"SELECT {_OBJECT_COLUMNS} FROM objects o ORDER BY o.added_at")
        return [self._record(r) for r in rows]

    def object_count(self) -> int:
        """How many objects this node knows (without counting their blocks)."""
        return int(self._query("SELECT COUNT(*) FROM objects")[0][0])

    def get_object(self, object_id: bytes) -> ObjectRecord | None:
        """One object's record, or None when this node has never seen it."""
        rows = self._query(f"SELECT {_OBJECT_COLUMNS} FROM objects o WHERE o.id = ?", (object_id,))
        return self._record(rows[0]) if rows else None

    def find_objects(self, prefix: bytes) -> list[bytes]:
        """Objects whose ID starts with `prefix` (users abbreviate IDs as with git): those recorded
        here, in the cloud's catalog, or deleted by this node."""
        rows = self._query(
            """SELECT id FROM objects WHERE substr(id, 1, ?1) = ?2
               UNION SELECT object_id FROM catalog WHERE substr(object_id, 1, ?1) = ?2
               UNION SELECT object_id FROM deletions WHERE substr(object_id, 1, ?1) = ?2""",
            (len(prefix), prefix),
        )
        return [bytes(r[0]) for r in rows]

    # -- pins

    def pin(self, object_id: bytes) -> None:
        """Keep the object's blocks: garbage collection never deletes them."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO pins (object_id) VALUES (?)", (object_id,))

    def unpin(self, object_id: bytes) -> None:
        """Let garbage collection reclaim the object's blocks."""
        with self.transaction() as db:
            db.execute("DELETE FROM pins WHERE object_id = ?", (object_id,))

    def is_pinned(self, object_id: bytes) -> bool:
        """True when the object is pinned here."""
        return bool(self._query("SELECT 1 FROM pins WHERE object_id = ?", (object_id,)))

    # -- what this node holds

    def has_every_block(self, object_id: bytes) -> bool:
        """True when every block the object lists (its manifest's row included) is stored here:
        what fsck asks of a pinned object."""
        return not self._query(
            """SELECT 1 FROM object_blocks ob WHERE ob.object_id = ?
               AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.id = ob.block_id) LIMIT 1""",
            (object_id,),
        )

    def local_indexes(self, object_id: bytes, held_only: bool = False) -> list[int] | None:
        """Positions (in manifest order) of the object's blocks stored here (and, with `held_only`,
        kept for the cloud rather than cached by a get); None if the object is unknown."""
        held = "AND EXISTS (SELECT 1 FROM holds h WHERE h.object_id = ob.object_id AND h.block_id = ob.block_id)"
        rows = self._query(
            f"""SELECT ob.segment, ob.share, EXISTS (SELECT 1 FROM blocks b WHERE b.id = ob.block_id
                   {held if held_only else ""})
               FROM object_blocks ob WHERE ob.object_id = ? AND ob.segment >= 0""",
            (object_id,),
        )
        if not rows:
            return None
        n = max(int(r[1]) for r in rows) + 1
        return sorted(int(r[0]) * n + int(r[1]) for r in rows if r[2])

    def local_inventory(self, after: bytes, limit: int) -> tuple[list[InventoryItem], bytes | None]:
        """A page of what this node announces, in object ID order after `after` (and the cursor, None at the end)."""
        ids = [
            bytes(r[0]) for r in self._query("SELECT id FROM objects WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        ]
        if not ids:
            return [], None
        return [item for item in self.inventory_of(ids) if any(item.bitmap)], ids[-1]

    def inventory_of(self, ids: list[bytes], span: bool = False) -> list[InventoryItem]:
        """What this node announces of these objects (empty bitmaps included: a release is news too).

        For the cloud's objects only blocks it keeps (held, or all when pinned) count; for
        others every stored block. Four indexed queries per 500 objects, or, with `span` (the IDs
        are a run of consecutive catalog entries), four range scans for all of them.
        """
        if span and ids:
            return self._inventory(ids, "BETWEEN ? AND ?", [min(ids), max(ids)])
        out = []
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            out += self._inventory(part, f"IN ({placeholders(len(part))})", part)
        return out

    def _inventory(self, ids: list[bytes], where: str, args: list[bytes]) -> list[InventoryItem]:
        cloud = {bytes(r[0]) for r in self._query(f"SELECT object_id FROM catalog WHERE object_id {where}", args)}
        pinned = {bytes(r[0]) for r in self._query(f"SELECT object_id FROM pins WHERE object_id {where}", args)}
        provisional = {
            bytes(r[0])
            for r in self._query(
                f"SELECT DISTINCT object_id FROM holds WHERE provisional = 1 AND object_id {where}", args
            )
        }
        rows = self._query(
            f"""SELECT ob.object_id, ob.segment, ob.share, EXISTS (SELECT 1 FROM blocks b WHERE b.id = ob.block_id),
                   EXISTS (SELECT 1 FROM holds h WHERE h.object_id = ob.object_id AND h.block_id = ob.block_id)
               FROM object_blocks ob WHERE ob.object_id {where} AND ob.segment >= 0""",
            args,
        )
        per: dict[bytes, list[tuple[int, int, bool]]] = {}
        for oid, seg, share, stored, held in rows:
            oid = bytes(oid)
            counts = oid not in cloud or oid in pinned or bool(held)
            per.setdefault(oid, []).append((int(seg), int(share), bool(stored) and counts))
        out = []
        for oid in ids:
            blocks = per.get(oid)
            if not blocks:
                continue
            n = max(share for _, share, _ in blocks) + 1
            bitmap = bytearray((len(blocks) + 7) // 8)
            for seg, share, have in blocks:
                if have:
                    i = seg * n + share
                    bitmap[i // 8] |= 0x80 >> (i % 8)
            out.append(InventoryItem(oid, bytes(bitmap), oid in pinned, oid in provisional))
        return out
