"""The peer records this node verified (the newest per peer), kept so a restart still knows where
members went; and the sequence number of its own record, which must only grow."""

from peercloud.store.db import Database

# Version 5: peer records (connect/record.py), newest verified per peer; our own row holds the
# last sequence number we signed.
SCHEMA_V5 = """
CREATE TABLE records (
    peer_id BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    raw BLOB NOT NULL
) WITHOUT ROWID;
"""


class RecordTables(Database):
    """Peer records: newest wins, written without waiting for the disk (peers send them again)."""

    def put_record(self, peer_id: bytes, seq: int, expires_at: int, raw: bytes) -> bool:
        """Keep a verified record unless one as new is there; True when it was stored."""
        with self.transaction(durable=False) as db:
            cur = db.execute(
                "INSERT INTO records (peer_id, seq, expires_at, raw) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(peer_id) DO UPDATE SET seq = excluded.seq, expires_at = excluded.expires_at,"
                " raw = excluded.raw WHERE excluded.seq > records.seq",
                (peer_id, seq, expires_at, raw),
            )
            return cur.rowcount > 0

    def records(self) -> list[bytes]:
        """Every raw record kept, to verify again at startup."""
        return [bytes(r[0]) for r in self._query("SELECT raw FROM records")]

    def drop_expired_records(self, now: float) -> int:
        """Forget records past their expiry; returns how many."""
        with self.transaction(durable=False) as db:
            return int(db.execute("DELETE FROM records WHERE expires_at < ?", (now,)).rowcount)
