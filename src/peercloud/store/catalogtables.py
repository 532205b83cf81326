"""Tables of the catalog: every member's signed log, the entries it makes, and the catalog itself.

`catalog_log` keeps each author's batches verbatim (to hand to members catching up);
`catalog_entries` the latest entry per (object, owner), with `logged = 0` for this node's own
entries not yet in a signed batch (signed after the add's commit, again after a crash);
`catalog` one row per object of the cloud, derived from its live entries: the strongest class
among its owners' (`rank`), the shape, the earliest add. Entries are checked and ranked by the
caller (`cloud/catalog.py`); every change here re-derives the rows of the objects it touched.
"""

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from peercloud.store.db import Database, placeholders

_CATALOG = "object_id, class, total_blocks, k, n, size, added_at"
PUT, REMOVE, ERASE = 1, 2, 3  # entry kinds, as in cloud/catalog.py
LEGACY_OWNER = bytes(32)  # owns the catalog rows from before owners: only an admin's erase ends them
# Catalog rows from before version 7 get an entry of no member's, ranked above any class (an
# entry a member plants can neither re-class nor, by its removal, delete them).
LEGACY_ENTRIES = f"""
INSERT OR IGNORE INTO catalog_entries (object_id, owner, kind, class, total_blocks, k, n, size, at, rank)
SELECT object_id, x'{LEGACY_OWNER.hex()}', 1, class, total_blocks, k, n, size, added_at, 1000000 FROM catalog;
"""
# Version 7: signed catalog logs (cloud/catalog.py). Rows of the version 3 catalog stay, owned by
# LEGACY_OWNER: an admin may delete them; members that join later never learn them.
SCHEMA_V7 = (
    """
CREATE TABLE catalog_entries (
    object_id BLOB NOT NULL,
    owner BLOB NOT NULL,
    kind INTEGER NOT NULL,
    class TEXT NOT NULL,
    total_blocks INTEGER NOT NULL,
    k INTEGER NOT NULL,
    n INTEGER NOT NULL,
    size INTEGER NOT NULL,
    at REAL NOT NULL,
    rank INTEGER NOT NULL,
    logged INTEGER NOT NULL DEFAULT 1,
    bad INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object_id, owner)
) WITHOUT ROWID;
CREATE INDEX catalog_entries_unlogged ON catalog_entries(owner) WHERE logged = 0;
CREATE TABLE catalog_erasures (
    object_id BLOB PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE catalog_log (
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    ops INTEGER NOT NULL,
    batch BLOB NOT NULL,
    PRIMARY KEY (author, seq)
) WITHOUT ROWID;
"""
    + LEGACY_ENTRIES
)


# Version 10: an entry also names its author. An owner key may be shared by several members (the
# owner key of a bucket, held by every device that writes to it): each writes that owner's entries
# in its own log, and the owner's latest entry (by time, then author) is the one that counts. A
# departed member's rows go with its log, whoever they were for.
SCHEMA_V10 = """
CREATE TABLE catalog_entries_v10 (
    object_id BLOB NOT NULL,
    owner BLOB NOT NULL,
    author BLOB NOT NULL,
    kind INTEGER NOT NULL,
    class TEXT NOT NULL,
    total_blocks INTEGER NOT NULL,
    k INTEGER NOT NULL,
    n INTEGER NOT NULL,
    size INTEGER NOT NULL,
    at REAL NOT NULL,
    rank INTEGER NOT NULL,
    logged INTEGER NOT NULL DEFAULT 1,
    bad INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object_id, owner, author)
) WITHOUT ROWID;
INSERT INTO catalog_entries_v10
    SELECT object_id, owner, owner, kind, class, total_blocks, k, n, size, at, rank, logged, bad FROM catalog_entries;
DROP TABLE catalog_entries;
ALTER TABLE catalog_entries_v10 RENAME TO catalog_entries;
CREATE INDEX catalog_entries_unlogged ON catalog_entries(author) WHERE logged = 0;
CREATE INDEX catalog_entries_author ON catalog_entries(author);
"""
# The latest entry of each (object, owner) among its authors' (a view over the rows of the
# objects in temp.touched, or of one object).
_LATEST = """SELECT * FROM (
    SELECT e.*, ROW_NUMBER() OVER (PARTITION BY e.object_id, e.owner ORDER BY e.at DESC, e.author DESC) AS latest
    FROM catalog_entries e {where}) WHERE latest = 1"""


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


@dataclass(frozen=True)
class OwnedEntry:
    """One owner's latest entry about an object, as a log made it (`cloud/catalog.py` Op)."""

    object_id: bytes
    owner: bytes
    kind: int
    storage_class: str
    total_blocks: int
    k: int
    n: int
    size: int
    at: float
    rank: int
    bad: bool = False  # counts for nothing: its class codes otherwise, or its manifest belied it
    author: bytes = b""  # the member whose log carries it (b"": the owner itself)


def _entry(r: Any) -> CatalogEntry:
    return CatalogEntry(bytes(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]))


def _erasures(db: sqlite3.Connection, admins: set[bytes]) -> set[bytes]:
    """Count again the erases of these admins only (the role is judged now, on every node
    alike); re-derive what changed and return the objects that left the catalog."""
    before = {bytes(r[0]): float(r[1]) for r in db.execute("SELECT object_id, at FROM catalog_erasures")}
    rows = db.execute(f"SELECT object_id, owner, at FROM catalog_entries WHERE kind = {ERASE}").fetchall()
    after: dict[bytes, float] = {}
    for oid, owner, at in rows:
        if bytes(owner) in admins:
            after[bytes(oid)] = max(after.get(bytes(oid), 0.0), float(at))
    if before == after:
        return set()
    db.execute("DELETE FROM catalog_erasures")
    db.executemany("INSERT INTO catalog_erasures (object_id, at) VALUES (?, ?)", list(after.items()))
    return derive(db, {o for o in before.keys() | after.keys() if before.get(o) != after.get(o)})


_OWNED = "object_id, owner, kind, class, total_blocks, k, n, size, at, rank, author"


def _owned(r: Any) -> OwnedEntry:
    t, k, n, size = (int(x) for x in r[4:8])
    owner, author = bytes(r[1]), bytes(r[10])
    return OwnedEntry(
        bytes(r[0]),
        owner,
        int(r[2]),
        str(r[3]),
        t,
        k,
        n,
        size,
        float(r[8]),
        int(r[9]),
        author=author * (author != owner),
    )


def put_entries(
    db: sqlite3.Connection, entries: Iterable[OwnedEntry], logged: bool, erasures: Iterable[tuple[bytes, float]] = ()
) -> set[bytes]:
    """Make these the owners' latest entries, and these admins' erasures (object, time) count,
    then re-derive their objects' rows, in the caller's transaction; returns the objects that
    left the catalog."""
    erasures = list(erasures)
    db.executemany(
        """INSERT INTO catalog_erasures (object_id, at) VALUES (?, ?)
           ON CONFLICT (object_id) DO UPDATE SET at = MAX(at, excluded.at)""",
        erasures,
    )
    rows = [
        (
            e.object_id,
            e.owner,
            e.author or e.owner,
            e.kind,
            e.storage_class,
            e.total_blocks,
            e.k,
            e.n,
            e.size,
            e.at,
            e.rank,
            logged,
            e.bad,
        )
        for e in entries
    ]
    db.executemany(
        """INSERT INTO catalog_entries
             (object_id, owner, author, kind, class, total_blocks, k, n, size, at, rank, logged, bad)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (object_id, owner, author) DO UPDATE SET kind = excluded.kind, class = excluded.class,
             total_blocks = excluded.total_blocks, k = excluded.k, n = excluded.n, size = excluded.size,
             at = excluded.at, rank = excluded.rank, logged = excluded.logged, bad = excluded.bad""",
        rows,
    )
    return derive(db, {r[0] for r in rows} | {o for o, _ in erasures})


def derive(db: sqlite3.Connection, objects: Iterable[bytes]) -> set[bytes]:
    """Re-derive the catalog rows of these objects from their live entries (in a transaction):
    each owner's latest entry counts; the strongest class among live puts (ties to the lower
    owner key), the earliest add. Returns the objects that left."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS touched (id BLOB PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM temp.touched")
    db.executemany("INSERT OR IGNORE INTO temp.touched (id) VALUES (?)", [(o,) for o in objects])
    had = {
        bytes(r[0]) for r in db.execute("SELECT c.object_id FROM catalog c JOIN temp.touched t ON t.id = c.object_id")
    }
    db.execute("DELETE FROM catalog WHERE object_id IN (SELECT id FROM temp.touched)")
    db.execute(
        f"""INSERT INTO catalog ({_CATALOG})
            SELECT object_id, class, total_blocks, k, n, size, first FROM (
                SELECT e.*, MIN(e.at) OVER (PARTITION BY e.object_id) AS first,
                       ROW_NUMBER() OVER (PARTITION BY e.object_id ORDER BY e.rank DESC, e.owner) AS place
                FROM ({_LATEST.format(where="JOIN temp.touched t ON t.id = e.object_id")}) e
                WHERE e.kind = {PUT} AND e.bad = 0
                  AND e.at > COALESCE((SELECT x.at FROM catalog_erasures x WHERE x.object_id = e.object_id), -1)
            ) WHERE place = 1"""
    )
    now = {
        bytes(r[0]) for r in db.execute("SELECT c.object_id FROM catalog c JOIN temp.touched t ON t.id = c.object_id")
    }
    return had - now


class CatalogTables(Database):
    """The catalog and the signed logs it is derived from."""

    # -- the logs

    def catalog_heads(self) -> dict[bytes, tuple[int, int, bytes]]:
        """Per author: the last batch held, how many entries its log holds, and that batch's bytes."""
        rows = self._query(
            """SELECT l.author, l.seq, (SELECT SUM(ops) FROM catalog_log s WHERE s.author = l.author), l.batch
               FROM catalog_log l WHERE l.seq = (SELECT MAX(seq) FROM catalog_log m WHERE m.author = l.author)"""
        )
        return {bytes(r[0]): (int(r[1]), int(r[2]), bytes(r[3])) for r in rows}

    def catalog_batches(self, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        """An author's batches after `after`, in order, at least one and then up to `max_bytes`."""
        out: list[bytes] = []
        size = 0
        for (batch,) in self._query(
            "SELECT batch FROM catalog_log WHERE author = ? AND seq > ? ORDER BY seq LIMIT 64", (author, after)
        ):
            if out and size + len(batch) > max_bytes:
                break
            out.append(bytes(batch))
            size += len(batch)
        return out

    def append_batch(
        self,
        author: bytes,
        seq: int,
        batch: bytes,
        entries: list[OwnedEntry],
        erasures: Iterable[tuple[bytes, float]] = (),
    ) -> set[bytes]:
        """Keep a member's checked batch, its entries and (an admin's) erasures, in one
        transaction; the objects touched.

        Not waited on the disk: the author and every member that has it send it again.
        """
        with self.transaction(durable=False) as db:
            db.execute(
                "INSERT INTO catalog_log (author, seq, ops, batch) VALUES (?, ?, ?, ?)",
                (author, seq, len(entries), batch),
            )
            return put_entries(db, entries, logged=True, erasures=erasures)

    def append_batches(
        self, author: bytes, batches: list[tuple[int, bytes, list[OwnedEntry], list[tuple[bytes, float]]]]
    ) -> set[bytes]:
        """Keep consecutive checked batches of a member's log (seq, bytes, entries, erasures) in
        one transaction; the objects touched. Not waited on the disk, as `append_batch`."""
        with self.transaction(durable=False) as db:
            db.executemany(
                "INSERT INTO catalog_log (author, seq, ops, batch) VALUES (?, ?, ?, ?)",
                [(author, seq, len(entries), data) for seq, data, entries, _ in batches],
            )
            entries = [e for _, _, es, _ in batches for e in es]
            return put_entries(db, entries, logged=True, erasures=[x for *_, xs in batches for x in xs])

    def unlogged(self, author: bytes, limit: int) -> list[OwnedEntry]:
        """This node's own entries still to sign into its log (for any owner key it writes for):
        puts before removals (an object moving to a new owner key is never left with none),
        ours first, oldest first."""
        rows = self._query(
            f"""SELECT {_OWNED} FROM catalog_entries INDEXED BY catalog_entries_unlogged
                WHERE author = ? AND logged = 0
                ORDER BY kind != {PUT}, owner != ?, owner, at LIMIT ?""",
            (author, author, limit),
        )
        return [_owned(r) for r in rows]

    def log_own(self, author: bytes, seq: int, batch: bytes, entries: list[OwnedEntry]) -> None:
        """Our signed batch joins our log and its entries count as logged, in one synced
        transaction (an entry changed since it was read stays unlogged, for the next batch)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO catalog_log (author, seq, ops, batch) VALUES (?, ?, ?, ?)",
                (author, seq, len(entries), batch),
            )
            db.executemany(
                """UPDATE catalog_entries SET logged = 1
                   WHERE object_id = ? AND owner = ? AND author = ? AND kind = ? AND class = ? AND at = ?""",
                [(e.object_id, e.owner, author, e.kind, e.storage_class, e.at) for e in entries],
            )

    def put_own(self, entries: list[OwnedEntry], erasures: Iterable[tuple[bytes, float]] = ()) -> set[bytes]:
        """This node's own entries (a removal, an erasure, a new class), to be signed into its log."""
        with self.transaction() as db:
            return put_entries(db, entries, logged=False, erasures=erasures)

    def drop_author(self, author: bytes, admins: set[bytes]) -> set[bytes]:
        """Forget a former member's log and entries (its erasures with them), and stop holding for
        the cloud what left the catalog with it, in one transaction; returns those objects."""
        with self.transaction() as db:
            rows = db.execute("SELECT object_id FROM catalog_entries WHERE author = ? OR owner = ?", (author, author))
            touched = {bytes(r[0]) for r in rows}
            db.execute("DELETE FROM catalog_log WHERE author = ?", (author,))
            db.execute("DELETE FROM catalog_entries WHERE author = ? OR owner = ?", (author, author))
            gone = derive(db, touched) | _erasures(db, admins)
            db.executemany("DELETE FROM holds WHERE object_id = ?", [(o,) for o in gone])
        return gone

    def recount_erasures(self, admins: set[bytes]) -> set[bytes]:
        """The admins changed: only erases by admins count; the objects that left the catalog."""
        with self.transaction() as db:
            return _erasures(db, admins)

    def rerank(self, classes: dict[str, tuple[int, int, int] | None]) -> set[bytes]:
        """Class definitions changed (name -> (rank, k, n), None when gone): rank their puts again,
        puts of another coding stop counting, and the objects touched are re-derived; returns them."""
        with self.transaction() as db:
            touched: set[bytes] = set()
            for name, known in classes.items():
                rank, k, n = known if known is not None else (0, 0, 0)
                rows = db.execute(f"SELECT object_id FROM catalog_entries WHERE class = ? AND kind = {PUT}", (name,))
                touched |= {bytes(r[0]) for r in rows}
                db.execute(f"UPDATE catalog_entries SET rank = ? WHERE class = ? AND kind = {PUT}", (rank, name))
                if known is not None:
                    db.execute(
                        f"UPDATE catalog_entries SET bad = 1 WHERE class = ? AND kind = {PUT} AND (k != ? OR n != ?)",
                        (name, k, n),
                    )
            derive(db, touched)
        return touched

    def mark_bad(self, object_id: bytes, owners: Iterable[bytes]) -> None:
        """Entries whose shape the object's manifest belies stop counting (here, for good)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE catalog_entries SET bad = 1 WHERE object_id = ? AND owner = ?", [(object_id, o) for o in owners]
            )
            derive(db, [object_id])

    def owned_entries(self, object_id: bytes) -> list[OwnedEntry]:
        """Every owner's latest entry about an object that still counts."""
        rows = self._query(
            f"SELECT {_OWNED} FROM ({_LATEST.format(where='WHERE e.object_id = ?')}) WHERE bad = 0 ORDER BY owner",
            (object_id,),
        )
        return [_owned(r) for r in rows]

    # -- the catalog derived from them

    def local_only(self) -> list[bytes]:
        """Objects pinned here that the catalog does not list: added before this node was in a cloud."""
        rows = self._query(
            "SELECT p.object_id FROM pins p WHERE NOT EXISTS (SELECT 1 FROM catalog c WHERE c.object_id = p.object_id)"
        )
        return [bytes(r[0]) for r in rows]

    def bring(self, entry: OwnedEntry) -> bool:
        """Offer a pinned object to the cloud in one transaction: our entry for it, its blocks held
        for the cloud (placement may move them, as after an add in the cloud), its pin gone.
        False when the catalog already listed it."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM catalog WHERE object_id = ?", (entry.object_id,)).fetchone():
                return False
            put_entries(db, [entry], logged=False)
            db.execute(
                """INSERT OR IGNORE INTO holds (object_id, block_id, provisional)
                   SELECT object_id, block_id, ? FROM object_blocks WHERE object_id = ?""",
                (entry.n > 1, entry.object_id),
            )
            db.execute("DELETE FROM pins WHERE object_id = ?", (entry.object_id,))
        return True

    def catalog(self, object_id: bytes | None = None) -> list[CatalogEntry]:
        """Objects of the cloud (or one of them)."""
        where, args = ("WHERE object_id = ?", (object_id,)) if object_id is not None else ("ORDER BY added_at", ())
        return [_entry(r) for r in self._query(f"SELECT {_CATALOG} FROM catalog {where}", args)]

    def catalog_uses(self, class_name: str) -> int:
        """How many objects of the catalog are kept under a class."""
        return int(self._query("SELECT COUNT(*) FROM catalog WHERE class = ?", (class_name,))[0][0])

    def catalog_after(self, after: bytes, limit: int) -> list[CatalogEntry]:
        """Entries in object ID order after `after`: a page for paged scans."""
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
