"""Tables of names: the buckets this node knows, members' bucket heads, and the merged keys.

`buckets`: each bucket this node reads or writes, by ID, with its local alias and current cap.
`bucket_heads`: every member's newest signed head per (bucket, epoch, writer), kept by every
member whether it can read the bucket or not (heads show IDs only). `bucket_logs`: how far this
node has read each writer's log (its last batch's read cap), its own log included.
`bucket_keys`: the merged index of the buckets it reads, one row per key, the winning entry
(`names/log.py`), tombstones included; `pending` marks this node's own entries not yet in a
batch. `bucket_batches`: the batch objects of this node's own logs (published once a head
names them). `bucket_owners`: every owner key this node held (a write cap's), kept after an
unshare replaced it: what was put under it stays this node's to delete.
"""

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from peercloud.store.catalogtables import put_entries
from peercloud.store.db import Database, placeholders

SCHEMA_V9 = """
CREATE TABLE buckets (
    bucket_id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    cap TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE bucket_heads (
    bucket_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    writer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    head BLOB NOT NULL,
    PRIMARY KEY (bucket_id, epoch, writer)
) WITHOUT ROWID;
CREATE INDEX bucket_heads_writer ON bucket_heads(writer);
CREATE TABLE bucket_logs (
    bucket_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    writer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    last BLOB NOT NULL,
    PRIMARY KEY (bucket_id, epoch, writer)
) WITHOUT ROWID;
CREATE TABLE bucket_keys (
    bucket_id BLOB NOT NULL,
    key TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    writer BLOB NOT NULL,
    removed INTEGER NOT NULL,
    object_id BLOB NOT NULL,
    object_key BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    content_type TEXT NOT NULL,
    class TEXT NOT NULL,
    meta BLOB NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_id, key)
) WITHOUT ROWID;
CREATE INDEX bucket_keys_object ON bucket_keys(object_id) WHERE removed = 0;
CREATE INDEX bucket_keys_pending ON bucket_keys(bucket_id) WHERE pending = 1;
CREATE TABLE bucket_owners (
    owner BLOB PRIMARY KEY,
    seed BLOB NOT NULL,
    bucket_id BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE bucket_batches (
    object_id BLOB PRIMARY KEY,
    bucket_id BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""
_KEY_COLUMNS = "key, hlc, writer, removed, object_id, object_key, size, mtime, content_type, class, meta"


@dataclass(frozen=True)
class KeyRow:
    """A key's winning entry as kept here (`names/log.py` Entry, with its bucket)."""

    bucket_id: bytes
    key: str
    hlc: int
    writer: bytes
    removed: bool
    object_id: bytes
    object_key: bytes
    size: int
    mtime: float
    content_type: str
    storage_class: str
    meta: dict[str, str]


def _row(bucket_id: bytes, r: Any) -> KeyRow:
    meta = msgpack.unpackb(bytes(r[10]), raw=False) if r[10] else {}
    return KeyRow(
        bucket_id,
        str(r[0]),
        int(r[1]),
        bytes(r[2]),
        bool(r[3]),
        bytes(r[4]),
        bytes(r[5]),
        int(r[6]),
        float(r[7]),
        str(r[8]),
        str(r[9]),
        meta,
    )


def _upsert(db: sqlite3.Connection, rows: Iterable[KeyRow], pending: bool) -> None:
    """Keep each entry where it beats the one held: greater (hlc, writer) wins, then (two entries
    a hostile writer made at one clock) the greater content, so every node keeps the same."""
    db.executemany(
        f"""INSERT INTO bucket_keys (bucket_id, {_KEY_COLUMNS}, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (bucket_id, key) DO UPDATE SET hlc = excluded.hlc, writer = excluded.writer,
              removed = excluded.removed, object_id = excluded.object_id, object_key = excluded.object_key,
              size = excluded.size, mtime = excluded.mtime, content_type = excluded.content_type,
              class = excluded.class, meta = excluded.meta, pending = excluded.pending
            WHERE (excluded.hlc, excluded.writer, excluded.removed, excluded.object_id, excluded.object_key,
                   excluded.size, excluded.mtime, excluded.content_type, excluded.class, excluded.meta)
                > (bucket_keys.hlc, bucket_keys.writer, bucket_keys.removed, bucket_keys.object_id,
                   bucket_keys.object_key, bucket_keys.size, bucket_keys.mtime, bucket_keys.content_type,
                   bucket_keys.class, bucket_keys.meta)""",
        [
            (
                r.bucket_id,
                r.key,
                r.hlc,
                r.writer,
                r.removed,
                r.object_id,
                r.object_key,
                r.size,
                r.mtime,
                r.content_type,
                r.storage_class,
                msgpack.packb(r.meta) if r.meta else b"",
                pending,
            )
            for r in rows
        ],
    )


def upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = last + 1 if last + 1 != 0xD800 else 0xE000
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


class BucketTables(Database):
    """Buckets, members' heads and the merged keys."""

    # -- buckets

    def buckets(self) -> list[tuple[bytes, str, str, float]]:
        """(bucket ID, alias, cap, created) of every bucket known here, by alias."""
        rows = self._query("SELECT bucket_id, name, cap, created_at FROM buckets ORDER BY name")
        return [(bytes(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def save_bucket(
        self,
        bucket_id: bytes,
        name: str,
        cap: str,
        created_at: float,
        reset: bool = False,
        owner: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Remember a bucket under an alias (a new epoch's cap replaces the old one) and a write
        cap's owner key (public, seed); `reset` forgets what was read of it (a newer epoch is
        read from its start)."""
        with self.transaction() as db:
            if owner is not None:
                db.execute(
                    "INSERT OR IGNORE INTO bucket_owners (owner, seed, bucket_id) VALUES (?, ?, ?)",
                    (*owner, bucket_id),
                )
            db.execute(
                """INSERT INTO buckets (bucket_id, name, cap, created_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (bucket_id) DO UPDATE SET name = excluded.name, cap = excluded.cap""",
                (bucket_id, name, cap, created_at),
            )
            if reset:
                db.execute("DELETE FROM bucket_keys WHERE bucket_id = ?", (bucket_id,))
                db.execute("DELETE FROM bucket_logs WHERE bucket_id = ?", (bucket_id,))

    def owner_seeds(self) -> dict[bytes, bytes]:
        """Every owner key this node held: public -> seed."""
        return {bytes(r[0]): bytes(r[1]) for r in self._query("SELECT owner, seed FROM bucket_owners")}

    def rekey_bucket(
        self, bucket_id: bytes, cap: str, writer: bytes, owner: tuple[bytes, bytes], entries: list[Any]
    ) -> None:
        """A new epoch of a bucket we write: its cap and owner key, every live key written again
        into our log under it (readers of the new epoch start from nothing), and its objects'
        catalog entries moved to the new owner key (`entries`), in one transaction."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO bucket_owners (owner, seed, bucket_id) VALUES (?, ?, ?)", (*owner, bucket_id)
            )
            put_entries(db, entries, logged=False)
            db.execute("UPDATE buckets SET cap = ? WHERE bucket_id = ?", (cap, bucket_id))
            db.execute(
                "UPDATE bucket_keys SET pending = 1, writer = ? WHERE bucket_id = ? AND removed = 0",
                (writer, bucket_id),
            )

    def forget_bucket(self, bucket_id: bytes) -> list[bytes]:
        """Forget a bucket, what was read of it and our own batches' record; their object IDs."""
        with self.transaction() as db:
            rows = db.execute("SELECT object_id FROM bucket_batches WHERE bucket_id = ?", (bucket_id,)).fetchall()
            for table in ("buckets", "bucket_keys", "bucket_logs", "bucket_batches"):
                db.execute(f"DELETE FROM {table} WHERE bucket_id = ?", (bucket_id,))
        return [bytes(r[0]) for r in rows]

    # -- heads (every member keeps them)

    def bucket_heads(self) -> list[bytes]:
        """Every head kept here, to send a member that connects."""
        return [bytes(r[0]) for r in self._query("SELECT head FROM bucket_heads")]

    def bucket_head(self, bucket_id: bytes, epoch: int, writer: bytes) -> tuple[int, bytes] | None:
        """(seq, head) of one writer's log, if kept here."""
        rows = self._query(
            "SELECT seq, head FROM bucket_heads WHERE bucket_id = ? AND epoch = ? AND writer = ?",
            (bucket_id, epoch, writer),
        )
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def heads_of(self, bucket_id: bytes, epoch: int) -> list[bytes]:
        """Every writer's head of one epoch of a bucket."""
        rows = self._query("SELECT head FROM bucket_heads WHERE bucket_id = ? AND epoch = ?", (bucket_id, epoch))
        return [bytes(r[0]) for r in rows]

    def keep_head(self, bucket_id: bytes, epoch: int, writer: bytes, seq: int, head: bytes, limit: int) -> bool:
        """Keep a checked head if it is newer than ours and its writer keeps fewer than `limit`
        logs here; True if kept."""
        with self.transaction(durable=False) as db:
            row = db.execute(
                "SELECT seq FROM bucket_heads WHERE bucket_id = ? AND epoch = ? AND writer = ?",
                (bucket_id, epoch, writer),
            ).fetchone()
            if row is not None and int(row[0]) >= seq:
                return False
            if row is None:
                count = db.execute("SELECT COUNT(*) FROM bucket_heads WHERE writer = ?", (writer,)).fetchone()[0]
                if count >= limit:
                    return False
            db.execute(
                """INSERT INTO bucket_heads (bucket_id, epoch, writer, seq, head) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (bucket_id, epoch, writer) DO UPDATE SET seq = excluded.seq, head = excluded.head""",
                (bucket_id, epoch, writer, seq, head),
            )
            return True

    def drop_heads_of(self, writers: Iterable[bytes]) -> None:
        """Heads of former members go (their logs can no longer be trusted to be extended)."""
        with self.transaction(durable=False) as db:
            db.executemany("DELETE FROM bucket_heads WHERE writer = ?", [(w,) for w in writers])

    # -- reading logs

    def bucket_log(self, bucket_id: bytes, epoch: int, writer: bytes) -> tuple[int, bytes]:
        """(seq, read cap of that batch) of the last batch of a writer's log read here; (0, b'')."""
        rows = self._query(
            "SELECT seq, last FROM bucket_logs WHERE bucket_id = ? AND epoch = ? AND writer = ?",
            (bucket_id, epoch, writer),
        )
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else (0, b"")

    def merge_names(
        self, bucket_id: bytes, rows: list[KeyRow], read: tuple[int, bytes, int, bytes] | None = None
    ) -> set[bytes]:
        """Merge entries read from a writer's log and, with `read` (epoch, writer, seq, read cap
        of that batch), note how far the log was read, in one transaction; the objects keys
        named before and no longer do (their owner may delete them once no name is left)."""
        with self.transaction() as db:
            before: dict[str, bytes] = {}
            for start in range(0, len(rows), 500):
                part = [r.key for r in rows[start : start + 500]]
                found = db.execute(
                    f"""SELECT key, object_id FROM bucket_keys WHERE bucket_id = ? AND removed = 0
                        AND key IN ({placeholders(len(part))})""",
                    [bucket_id, *part],
                )
                before.update((str(k), bytes(o)) for k, o in found)
            _upsert(db, rows, pending=False)
            if read is not None:
                db.execute(
                    """INSERT INTO bucket_logs (bucket_id, epoch, writer, seq, last) VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT (bucket_id, epoch, writer) DO UPDATE SET seq = excluded.seq, last = excluded.last""",
                    (bucket_id, *read),
                )
            displaced = set()
            for key, oid in before.items():
                now = db.execute(
                    "SELECT object_id, removed FROM bucket_keys WHERE bucket_id = ? AND key = ?", (bucket_id, key)
                ).fetchone()
                if now is None or bool(now[1]) or bytes(now[0]) != oid:
                    displaced.add(oid)
            return displaced

    # -- this node's own writes

    def put_names(self, db: sqlite3.Connection, rows: Iterable[KeyRow]) -> None:
        """This node's own entries, in the caller's transaction (an add's): merged now, and
        pending until a batch of our log carries them."""
        _upsert(db, rows, pending=True)

    def write_names(self, rows: Iterable[KeyRow]) -> None:
        """This node's own entries in a transaction of their own (removals, renames)."""
        with self.transaction() as db:
            _upsert(db, rows, pending=True)

    def pending(self, bucket_id: bytes, writer: bytes, limit: int) -> list[KeyRow]:
        """Our entries of a bucket still to write into a batch, oldest first."""
        rows = self._query(
            f"""SELECT {_KEY_COLUMNS} FROM bucket_keys INDEXED BY bucket_keys_pending
                WHERE bucket_id = ? AND pending = 1 AND writer = ?
                ORDER BY hlc LIMIT ?""",
            (bucket_id, writer, limit),
        )
        return [_row(bucket_id, r) for r in rows]

    def pending_buckets(self) -> list[bytes]:
        """Buckets with entries of ours still to write (after a crash)."""
        return [bytes(r[0]) for r in self._query("SELECT DISTINCT bucket_id FROM bucket_keys WHERE pending = 1")]

    def log_names(
        self, bucket_id: bytes, epoch: int, writer: bytes, seq: int, cap: bytes, head: bytes, rows: list[KeyRow]
    ) -> None:
        """Our batch is stored and signed: its entries are no longer pending, our log and head
        move on, and the batch object is noted as ours, in one synced transaction."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE bucket_keys SET pending = 0 WHERE bucket_id = ? AND key = ? AND hlc = ? AND writer = ?",
                [(bucket_id, r.key, r.hlc, writer) for r in rows],
            )
            db.execute(
                """INSERT INTO bucket_logs (bucket_id, epoch, writer, seq, last) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (bucket_id, epoch, writer) DO UPDATE SET seq = excluded.seq, last = excluded.last""",
                (bucket_id, epoch, writer, seq, cap),
            )
            db.execute(
                """INSERT INTO bucket_heads (bucket_id, epoch, writer, seq, head) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (bucket_id, epoch, writer) DO UPDATE SET seq = excluded.seq, head = excluded.head""",
                (bucket_id, epoch, writer, seq, head),
            )
            db.execute(
                """INSERT INTO bucket_batches (object_id, bucket_id, published) VALUES (?, ?, 1)
                   ON CONFLICT (object_id) DO UPDATE SET published = 1""",
                (cap[:32], bucket_id),
            )

    # -- the merged keys

    def key_row(self, bucket_id: bytes, key: str) -> KeyRow | None:
        """A key's winning entry (a removal too), if any."""
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM bucket_keys WHERE bucket_id = ? AND key = ?", (bucket_id, key))
        return _row(bucket_id, rows[0]) if rows else None

    def list_keys(self, bucket_id: bytes, prefix: str, start: str, limit: int) -> list[KeyRow]:
        """Live keys starting with `prefix`, from `start` on (inclusive), in byte order, at most `limit`."""
        upper = upper_bound(prefix)
        sql = f"SELECT {_KEY_COLUMNS} FROM bucket_keys WHERE bucket_id = ? AND key >= ? AND removed = 0"
        args: list[Any] = [bucket_id, max(prefix, start)]
        if upper is not None:
            sql += " AND key < ?"
            args.append(upper)
        rows = self._query(sql + " ORDER BY key LIMIT ?", [*args, limit])
        return [_row(bucket_id, r) for r in rows]

    def count_keys(self, bucket_id: bytes) -> tuple[int, int]:
        """(live keys, their bytes) of a bucket."""
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM bucket_keys WHERE bucket_id = ? AND removed = 0",
            (bucket_id,),
        )[0]
        return int(row[0]), int(row[1])

    def bucket_objects(self, bucket_id: bytes) -> list[bytes]:
        """Objects the live keys of a bucket name."""
        rows = self._query(
            "SELECT DISTINCT object_id FROM bucket_keys WHERE bucket_id = ? AND removed = 0", (bucket_id,)
        )
        return [bytes(r[0]) for r in rows]

    def names_of(self, object_id: bytes) -> list[tuple[bytes, str]]:
        """(bucket, key) of every live name of an object in the buckets read here."""
        rows = self._query("SELECT bucket_id, key FROM bucket_keys WHERE object_id = ? AND removed = 0", (object_id,))
        return [(bytes(r[0]), str(r[1])) for r in rows]

    def named_objects(self) -> dict[bytes, tuple[bytes, str]]:
        """One live name (bucket, key) of every named object, for listings."""
        rows = self._query(
            "SELECT object_id, bucket_id, MIN(key) FROM bucket_keys WHERE removed = 0 GROUP BY object_id"
        )
        return {bytes(r[0]): (bytes(r[1]), str(r[2])) for r in rows}

    def note_batch(self, db: sqlite3.Connection, object_id: bytes, bucket_id: bytes) -> None:
        """A batch object of our log, noted in the add's transaction: until its head is signed
        it is unpublished, and one a crash left so is deleted at the next start."""
        db.execute("INSERT OR IGNORE INTO bucket_batches (object_id, bucket_id) VALUES (?, ?)", (object_id, bucket_id))

    def unpublished_batches(self) -> list[bytes]:
        """Batch objects of our logs a crash kept from being named by a head."""
        return [bytes(r[0]) for r in self._query("SELECT object_id FROM bucket_batches WHERE published = 0")]

    def drop_batch(self, object_id: bytes) -> None:
        """Forget an unpublished batch object (it was deleted)."""
        with self.transaction() as db:
            db.execute("DELETE FROM bucket_batches WHERE object_id = ?", (object_id,))
