"""Tables of the cloud: its signed document and its history, the invites this admin issued, and
the blocks this node keeps for the cloud (holds). The catalog is `catalogtables.py`'s."""

import time
from collections.abc import Iterable

from peercloud.store.db import Database

# Version 6: every version of the cloud document this node holds, the chain its current one
# ends (cloud/history.py): to find where two admins' edits forked, and to hand missing versions
# to a member catching up. The `cloud` row stays the current version.
SCHEMA_V6 = """
CREATE TABLE cloud_versions (
    seq INTEGER PRIMARY KEY,
    doc BLOB NOT NULL
);
"""


class CloudTables(Database):
    """The cloud document, invites and holds."""

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

    def leave_cloud(self) -> None:
        """Forget the cloud, its catalog and what was held for it, in one transaction."""
        with self.transaction() as db:
            for table in (
                "cloud",
                "cloud_versions",
                "catalog",
                "catalog_entries",
                "catalog_log",
                "catalog_erasures",
                "holds",
            ):
                db.execute(f"DELETE FROM {table}")

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
