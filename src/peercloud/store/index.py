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

SCHEMA_VERSION = 2
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
            for target, script in ((1, _SCHEMA), (2, _SCHEMA_V2)):
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
               AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.object_id = b.id)"""
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

    def add_object(self, record: ObjectRecord, blocks: Iterable[tuple[int, int, bytes]], pin: bool) -> None:
        """Record an object, its (segment, share, block) list and optionally a pin, atomically."""
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

    def set_holding(self, peer_id: bytes, object_id: bytes, bitmap: bytes, offset: int = 0) -> None:
        """Record (part of) a peer's HAVE bitmap for one object."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT bitmap FROM holdings WHERE peer_id = ? AND object_id = ?", (peer_id, object_id)
            ).fetchone()
            old = bytearray(row[0]) if row and offset else bytearray()
            if len(old) < offset + len(bitmap):
                old.extend(bytes(offset + len(bitmap) - len(old)))
            old[offset : offset + len(bitmap)] = bitmap
            db.execute(
                "INSERT INTO holdings (peer_id, object_id, bitmap, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(peer_id, object_id) DO UPDATE SET bitmap = excluded.bitmap,"
                " updated_at = excluded.updated_at",
                (peer_id, object_id, bytes(old), time.time()),
            )

    def holdings(self, object_id: bytes) -> list[tuple[bytes, bytes, float]]:
        """(peer, bitmap, when) for every peer that announced blocks of this object."""
        rows = self._query("SELECT peer_id, bitmap, updated_at FROM holdings WHERE object_id = ?", (object_id,))
        return [(bytes(r[0]), bytes(r[1]), float(r[2])) for r in rows]

    def peer_holdings(self, peer_id: bytes) -> list[tuple[bytes, bytes]]:
        """(object, bitmap) for everything one peer announced."""
        rows = self._query("SELECT object_id, bitmap FROM holdings WHERE peer_id = ?", (peer_id,))
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    def local_indexes(self, object_id: bytes) -> list[int] | None:
        """Positions (in manifest order) of the object's blocks stored here; None if unknown."""
        rows = self._query(
            """SELECT ob.segment, ob.share, EXISTS (SELECT 1 FROM blocks b WHERE b.id = ob.block_id)
               FROM object_blocks ob WHERE ob.object_id = ? AND ob.segment >= 0""",
            (object_id,),
        )
        if not rows:
            return None
        n = max(int(r[1]) for r in rows) + 1
        return sorted(int(r[0]) * n + int(r[1]) for r in rows if r[2])


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
