"""The node's SQLite index (WAL): which blocks are stored, which objects exist, what is pinned.

A row for a block is only ever inserted after its file is durable, so the index never names a
block that is missing or partial after a crash. One connection is shared by the node's worker
threads behind a lock; SQLite transactions make each change all-or-nothing.
"""

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
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
        """Share of the object's blocks (manifest included) held on this node."""
        return 100.0 * self.local_blocks / self.total_blocks if self.total_blocks else 100.0


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


_OBJECT_COLUMNS = """
    o.id, o.name, o.size, o.class, o.added_at, o.read_key,
    (SELECT COUNT(*) FROM object_blocks ob JOIN blocks b ON b.id = ob.block_id
      WHERE ob.object_id = o.id),
    (SELECT COUNT(*) FROM object_blocks ob WHERE ob.object_id = o.id)
"""


class Index:
    """Thread-safe access to the node's SQLite index."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"index {path} has schema {version}; this peercloud knows {SCHEMA_VERSION}")
            for target, script in ((1, _SCHEMA), (2, _SCHEMA_V2), (3, _SCHEMA_V3)):
                if version < target:
                    for statement in _split(script):
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Release the database (checkpointing the WAL)."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a group of statements atomically, holding the lock against other threads."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

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
        catalog: CatalogEntry | None = None,
    ) -> None:
        """Record an object, its (segment, share, block) list and a pin, atomically.

        With `catalog`, the object is the cloud's instead: listed in the catalog and its blocks
        held for the cloud (which may release them), in the same transaction.
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
                db.executemany(
                    "INSERT OR IGNORE INTO holds (object_id, block_id) VALUES (?, ?)",
                    [(record.object_id, bid) for _, _, bid in blocks],
                )
                _insert_catalog(db, catalog)

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

    def get_object(self, object_id: bytes) -> ObjectRecord | None:
        """One object's record, or None when this node has never seen it."""
        rows = self._query(f"SELECT {_OBJECT_COLUMNS} FROM objects o WHERE o.id = ?", (object_id,))
        return self._record(rows[0]) if rows else None

    def find_objects(self, prefix: bytes) -> list[bytes]:
        """Objects whose ID starts with `prefix` (users abbreviate IDs as with git)."""
        rows = self._query("SELECT id FROM objects WHERE substr(id, 1, ?) = ?", (len(prefix), prefix))
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

    # -- peers and what they hold

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

    def set_holding(
        self, peer_id: bytes, object_id: bytes, bitmap: bytes, offset: int = 0, pinned: bool = False
    ) -> None:
        """Record (part of) a peer's HAVE bitmap for one object, and whether it pinned it by hand."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT bitmap, confirmed FROM holdings WHERE peer_id = ? AND object_id = ?", (peer_id, object_id)
            ).fetchone()
            old = bytearray(row[0]) if row and offset else bytearray()
            if len(old) < offset + len(bitmap):
                old.extend(bytes(offset + len(bitmap) - len(old)))
            old[offset : offset + len(bitmap)] = bitmap
            proved = bytes(row[1]) if row else b""
            # Proofs stay for claimed blocks; beyond this piece they wait for the next pieces.
            confirmed = bytes(a & b for a, b in zip(proved, old, strict=False)) + proved[len(old) :]
            db.execute(
                "INSERT INTO holdings (peer_id, object_id, bitmap, updated_at, confirmed, pinned)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(peer_id, object_id) DO UPDATE SET bitmap = excluded.bitmap,"
                " updated_at = excluded.updated_at, confirmed = excluded.confirmed, pinned = excluded.pinned",
                (peer_id, object_id, bytes(old), time.time(), confirmed, pinned),
            )

    def set_audit(self, peer_id: bytes, object_id: bytes, confirmed: bytes, failed: bool) -> None:
        """Record an audit of a peer's claim: the blocks it proved, or that it failed."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE holdings SET confirmed = ?, checked_at = ?,"
                " failed_at = CASE WHEN ? THEN ? ELSE NULL END WHERE peer_id = ? AND object_id = ?",
                (confirmed, now, failed, now, peer_id, object_id),
            )

    def holdings(self, object_id: bytes | None = None) -> list[tuple[bytes, Holding]]:
        """(object, holding) for every peer that announced blocks of this object (or of any)."""
        where, args = ("WHERE object_id = ?", (object_id,)) if object_id is not None else ("", ())
        rows = self._query(
            "SELECT object_id, peer_id, bitmap, updated_at, confirmed, checked_at, failed_at, pinned"
            f" FROM holdings {where}",
            args,
        )
        return [
            (bytes(r[0]), Holding(bytes(r[1]), bytes(r[2]), float(r[3]), bytes(r[4]), r[5], r[6], bool(r[7])))
            for r in rows
        ]

    def peer_holdings(self, peer_id: bytes) -> list[tuple[bytes, bytes]]:
        """(object, bitmap) for everything one peer announced."""
        rows = self._query("SELECT object_id, bitmap FROM holdings WHERE peer_id = ?", (peer_id,))
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

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

    # -- the cloud

    def cloud_doc(self) -> bytes | None:
        """The signed cloud document this node holds, if it is in a cloud."""
        rows = self._query("SELECT doc FROM cloud WHERE id = 1")
        return bytes(rows[0][0]) if rows else None

    def set_cloud_doc(self, doc: bytes) -> None:
        """Replace the cloud document (leaving the cloud is `leave_cloud`)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO cloud (id, doc) VALUES (1, ?)", (doc,))

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
        with self.transaction() as db:
            return _insert_catalog(db, entry)

    def leave_cloud(self) -> None:
        """Forget the cloud, its catalog and what was held for it, in one transaction."""
        with self.transaction() as db:
            for table in ("cloud", "catalog", "holds"):
                db.execute(f"DELETE FROM {table}")

    def catalog(self, object_id: bytes | None = None) -> list[CatalogEntry]:
        """Objects of the cloud (or one of them)."""
        where, args = ("WHERE object_id = ?", (object_id,)) if object_id is not None else ("ORDER BY added_at", ())
        rows = self._query(f"SELECT object_id, class, total_blocks, k, n, size, added_at FROM catalog {where}", args)
        return [CatalogEntry(bytes(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6]) for r in rows]

    def hold(self, object_id: bytes, block_ids: Iterable[bytes]) -> None:
        """Keep these blocks for the cloud (garbage collection spares them)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO holds (object_id, block_id) VALUES (?, ?)", [(object_id, b) for b in block_ids]
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


def _insert_catalog(db: sqlite3.Connection, e: CatalogEntry) -> bool:
    return bool(
        db.execute(
            "INSERT OR IGNORE INTO catalog (object_id, class, total_blocks, k, n, size, added_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.object_id, e.storage_class, e.total_blocks, e.k, e.n, e.size, e.added_at),
        ).rowcount
    )


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
