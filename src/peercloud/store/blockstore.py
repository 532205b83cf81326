"""Content-addressed block files on disk, indexed in SQLite, verified on every write and read.

A write is staged (verified, written to a temp file, fsynced, renamed into place) and then
committed (directories fsynced, index rows inserted in one transaction). Staging is thread-safe
so hashing and fsync of many blocks overlap; committing in batches keeps fsyncs per block low.
A crash between the two leaves at most a stray file that no index row names, which `fsck`
removes.

Concurrency: every decision about one block — stage it, commit it, delete it, call its file a
leftover, quarantine it — is taken under the store's lock. A block being written, or written and
not yet committed, is in `_pending`; every `Staged` handed out is a claim on its block until it
is committed or aborted. Neither `delete` nor `fsck` touches a pending or claimed block, and a
block whose rows are gone but whose file is still being unlinked is staged afresh only after.
"""

import contextlib
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from peercloud.content import merkle
from peercloud.errors import IntegrityError, NotFoundError, QuotaExceededError
from peercloud.fsutil import fsync_dir, write_new_file_direct
from peercloud.store.index import Index
from peercloud.units import format_size


@dataclass(frozen=True)
class Staged:
    """A block whose file is durable; `new` is False when it was already stored."""

    block_id: bytes
    size: int
    new: bool


class BlockStore:
    """The node's blocks: one file each under blocks/<2 hex>/<64 hex>."""

    def __init__(self, root: Path, index: Index, quota: int | None = None) -> None:
        self.blocks_dir = root / "blocks"
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        for d in (self.blocks_dir, self.tmp_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.quota = quota
        self._lock = threading.Lock()
        self._pending: dict[bytes, tuple[int, threading.Event]] = {}  # being written or awaiting commit
        self._claims: Counter[bytes] = Counter()  # Staged handed out and not yet committed or aborted
        self._deleting: dict[bytes, threading.Event] = {}  # rows gone, files being unlinked
        self._used = index.used_bytes()

    @property
    def used(self) -> int:
        """Bytes stored plus bytes staged and not yet committed."""
        return self._used

    def path(self, block_id: bytes) -> Path:
        """Where a block's file lives."""
        h = block_id.hex()
        return self.blocks_dir / h[:2] / h

    def has(self, block_id: bytes) -> bool:
        """True when the block is stored and committed here."""
        return self.index.has_block(block_id)

    def stage(self, data: bytes | memoryview, expect: bytes | None = None) -> Staged:
        """Verify a block and make its file durable; call `commit` (or `abort`) to finish with it.

        Thread-safe. When another thread is already writing the same block, this waits for that
        write and answers `new=False` only once the file is durable. Until committed or aborted,
        the block is claimed: `delete` and `fsck` leave it alone.
        """
        bid = merkle.block_id(data)
        if expect is not None and bid != expect:
            raise IntegrityError(f"block {expect.hex()} failed verification (content hashes to {bid.hex()})")
        size = len(data)
        while True:
            entry: tuple[int, threading.Event] | None = None
            with self._lock:
                busy = self._deleting.get(bid)
                if busy is None:
                    if self.index.has_block(bid):
                        self._claims[bid] += 1
                        return Staged(bid, size, new=False)
                    entry = self._pending.get(bid)
                    if entry is None:
                        if self.quota is not None and self._used + size > self.quota:
                            raise QuotaExceededError(
                                f"storage quota reached: {format_size(self._used)} of {format_size(self.quota)} "
                                "used; raise `quota` in config.toml or free space"
                            )
                        self._used += size
                        done = threading.Event()
                        self._pending[bid] = (size, done)
                        self._claims[bid] += 1
                        break
                    busy = entry[1]
            busy.wait()  # a delete unlinking its file, or another thread writing it
            with self._lock:
                if entry is not None and self._pending.get(bid) is entry:
                    self._claims[bid] += 1
                    return Staged(bid, size, new=False)  # written by the other thread, commit pending
            # The delete finished, or the other write failed or was aborted: look again.
        try:
            self._write(bid, data)
        except BaseException:
            self._release([Staged(bid, size, new=True)])
            raise
        done.set()
        return Staged(bid, size, new=True)

    def _write(self, bid: bytes, data: bytes | memoryview) -> None:
        final = self.path(bid)
        if not final.parent.exists():
            final.parent.mkdir(exist_ok=True)
            fsync_dir(self.blocks_dir)  # the new shard directory must survive a power loss too
        tmp = self.tmp_dir / (bid.hex() + f".{threading.get_ident()}.part")
        try:
            write_new_file_direct(tmp, data)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _unclaim(self, bid: bytes) -> None:
        """Drop one claim (the caller holds the lock)."""
        if self._claims[bid] > 1:
            self._claims[bid] -= 1
        else:
            self._claims.pop(bid, None)

    def _release(self, staged: Iterable[Staged]) -> None:
        """A write failed: forget its reservation and claim; threads waiting on it retry."""
        with self._lock:
            for s in staged:
                self._unclaim(s.block_id)
                entry = self._pending.pop(s.block_id, None) if s.new else None
                if entry is not None:
                    self._used -= s.size
                    entry[1].set()

    def commit(self, staged: Iterable[Staged]) -> None:
        """Make staged blocks visible: fsync their directories, then insert their index rows.

        Rows go in for every staged block still awaiting one, whoever wrote it, so a block a
        thread got as `new=False` is recorded even if its writer aborted. Claims end here.
        """
        staged = list(staged)
        with self._lock:
            awaiting = {s.block_id for s in staged if s.block_id in self._pending}
        for d in {self.path(bid).parent for bid in awaiting}:
            fsync_dir(d)
        with self._lock:
            # Rows and reservations change together: `used` never counts a block twice or not at all.
            entries = {bid: entry for bid in awaiting if (entry := self._pending.get(bid)) is not None}
            self.index.add_blocks((bid, size) for bid, (size, _) in entries.items())
            for bid in entries:
                del self._pending[bid]
            for s in staged:
                self._unclaim(s.block_id)

    def abort(self, staged: Iterable[Staged]) -> None:
        """Drop staged blocks that will never be committed (by this caller).

        A block's file goes only when no other claim on it remains: another thread may have been
        told `new=False` for the same block and still means to commit it.
        """
        with self._lock:
            for s in staged:
                self._unclaim(s.block_id)
                entry = self._pending.get(s.block_id)
                if entry is not None and entry[1].is_set() and not self._claims[s.block_id]:
                    del self._pending[s.block_id]
                    self._used -= entry[0]
                    self.path(s.block_id).unlink(missing_ok=True)  # under the lock: no new write of it yet

    def put(self, data: bytes | memoryview, expect: bytes | None = None) -> bytes:
        """Store one block durably and return its ID."""
        staged = self.stage(data, expect)
        self.commit([staged])
        return staged.block_id

    def get(self, block_id: bytes) -> bytes:
        """Read a block, verifying it against its ID; a bad block is never returned."""
        try:
            data = self.path(block_id).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"block {block_id.hex()} is not stored on this node") from None
        if merkle.block_id(data) != block_id:
            raise IntegrityError(
                f"block {block_id.hex()} is corrupt on disk ({len(data)} bytes fail verification); run `peercloud fsck`"
            )
        return data

    def delete(
        self, block_ids: Iterable[bytes], keep: Callable[[list[bytes]], set[bytes]] | None = None
    ) -> list[bytes]:
        """Remove blocks nothing needs any more; returns those removed.

        Spared: blocks being staged or awaiting commit, and those `keep` names — it is called under
        the store's lock, so no stage of these blocks runs between its answer and the removal.
        Index rows go first, so a crash never leaves a row without a file.
        """
        ids = list(dict.fromkeys(block_ids))
        with self._lock:
            ids = [b for b in ids if b not in self._pending and b not in self._claims and b not in self._deleting]
            if keep is not None and ids:
                spared = keep(ids)
                ids = [b for b in ids if b not in spared]
            if not ids:
                return []
            self.index.remove_blocks(ids)
            unlinked = threading.Event()
            for bid in ids:
                self._deleting[bid] = unlinked  # a stage of one of these waits until its file is gone
            self._recount()
        try:
            for bid in ids:
                self.path(bid).unlink(missing_ok=True)
        finally:
            with self._lock:
                for bid in ids:
                    self._deleting.pop(bid, None)
            unlinked.set()
        return ids

    def _recount(self) -> None:
        """Bytes used from the index plus reservations (the caller holds the lock)."""
        self._used = self.index.used_bytes() + sum(size for size, _ in self._pending.values())

    def quarantine(self, block_id: bytes) -> Path | None:
        """Move a damaged block file aside (kept for inspection) and forget it.

        Checked again under the lock first: a block being staged, no longer indexed, or whose
        file verifies now (deleted and stored again since it was read) is left alone (None).
        """
        with self._lock:
            if block_id in self._pending or block_id in self._deleting or not self.index.has_block(block_id):
                return None
            src = self.path(block_id)
            try:
                if merkle.block_id(src.read_bytes()) == block_id:
                    return None
            except FileNotFoundError:
                pass
            self.index.remove_blocks([block_id])
            self._recount()
            dest = self.quarantine_dir / block_id.hex()
            if src.exists():
                shutil.move(src, dest)
                # Its row is gone: unless the move is durable, a power cut brings the file back
                # as a stray that the next fsck deletes, and the evidence with it.
                fsync_dir(self.quarantine_dir)
            return dest

    def remove_leftovers(self) -> int:
        """Delete what interrupted writes left behind; returns how many files.

        Leftovers are files in tmp/ and block files no index row names. Each is judged and
        unlinked under the lock, so a write in flight (its block pending) keeps its temp file
        and its renamed file whose row is not committed yet.
        """
        removed = 0
        for f in list(self.tmp_dir.iterdir()):
            with self._lock:
                if _block_of(f.name.split(".", 1)[0]) in self._pending:
                    continue  # its writer is still using it
                with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
                    f.unlink()
                    removed += 1
        indexed = {bid for bid, _ in self.index.block_ids()}
        for shard in list(self.blocks_dir.iterdir()):
            for f in list(shard.iterdir()):
                bid = _block_of(f.name)
                if bid in indexed:
                    continue
                with self._lock:
                    if bid is not None and (bid in self._pending or bid in self._deleting or self.index.has_block(bid)):
                        continue  # committed since the snapshot, awaiting its row, or being deleted
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
                        removed += 1
        return removed

    def gc(self) -> int:
        """Delete blocks no pinned object needs; returns how many."""
        ids = self.index.unreferenced_blocks()
        return len(self.delete(ids, keep=lambda candidates: set(candidates) - set(self.index.unreferenced_blocks())))


def _block_of(name: str) -> bytes | None:
    """The block ID a file name in blocks/ or tmp/ stands for, if it is one."""
    try:
        bid = bytes.fromhex(name)
    except ValueError:
        return None
    return bid if len(bid) == 32 else None
