"""The SQLite connection every index table shares: one connection, one lock, WAL, transactions.

The node's worker threads share one connection behind a lock; a transaction holds the lock
from BEGIN IMMEDIATE to COMMIT so each change is all-or-nothing. The tables live in modules
named by their concern (`index.py`: blocks, objects, pins; `holdings.py`: peers and what they
hold; `cloudtables.py`: the cloud document, invites, catalog and holds), each a mixin over this.
"""

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Database:
    """Thread-safe access to one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        # Claims and catalog of 100,000 objects are tens of MB of random-keyed B-trees: keep
        # them in cache (the default 2 MB makes every insert a page miss).
        self._db.execute("PRAGMA cache_size=-65536")

    def migrate(self, path: Path, scripts: list[str]) -> None:
        """Bring the schema to version len(scripts), running each script not yet applied, atomically."""
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(scripts):
                raise RuntimeError(f"index {path} has schema {version}; this peercloud knows {len(scripts)}")
            for target, script in enumerate(scripts, start=1):
                if version < target:
                    for statement in (s.strip() for s in script.split(";")):
                        if statement:
                            db.execute(statement)
            db.execute(f"PRAGMA user_version={len(scripts)}")

    def close(self) -> None:
        """Release the database (checkpointing the WAL)."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Run a group of statements atomically, holding the lock against other threads.

        `durable=False` commits without waiting for the disk (synchronous=NORMAL, still atomic
        and crash-consistent in WAL mode): for soft state peers re-send anyway — their claims,
        catalog pages pulled from them. The next durable commit or checkpoint syncs it too.
        """
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()


def placeholders(n: int) -> str:
    """`?, ?, …` for an IN list of n values."""
    return ", ".join("?" * n)
