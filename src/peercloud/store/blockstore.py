"""Content-addressed block files on disk, indexed in SQLite, verified on every write and read.

A write is staged (verified, written to a temp file, fsynced, renamed into place) and then
committed (directories fsynced, index rows inserted in one transaction). Staging is thread-safe
so hashing and fsync of many blocks overlap; committing in batches keeps fsyncs per block low.
A crash between the two leaves at most a stray file that no index row names, which `fsck`
removes.
"""

import os
import shutil
import threading
from collections.abc import Iterable
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
        """Verify a block and make its file durable; call `commit` to make it visible.

        Thread-safe. When another thread is already writing the same block, this waits for that
        write and answers `new=False` only once the file is durable.
        """
        bid = merkle.block_id(data)
        if expect is not None and bid != expect:
            raise IntegrityError(f"block {expect.hex()} failed verification (content hashes to {bid.hex()})")
        size = len(data)
        while True:
            with self._lock:
                if self.index.has_block(bid):
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
                    break
            entry[1].wait()
            with self._lock:
                if self._pending.get(bid) is entry:
                    return Staged(bid, size, new=False)  # written by the other thread, commit pending
            # The other write failed and was released: try again ourselves.
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

    def _release(self, staged: Iterable[Staged]) -> None:
        with self._lock:
            for s in staged:
                entry = self._pending.pop(s.block_id, None) if s.new else None
                if entry is not None:
                    self._used -= s.size
                    entry[1].set()  # wake threads waiting on this block: they retry

    def commit(self, staged: Iterable[Staged]) -> None:
        """Make staged blocks visible: fsync their directories, then insert their index rows."""
        new = [s for s in staged if s.new]
        for d in {self.path(s.block_id).parent for s in new}:
            fsync_dir(d)
        self.index.add_blocks((s.block_id, s.size) for s in new)
        with self._lock:
            for s in new:
                self._pending.pop(s.block_id, None)

    def abort(self, staged: Iterable[Staged]) -> None:
        """Drop staged blocks that will never be committed."""
        staged = [s for s in staged if s.new]
        for s in staged:
            self.path(s.block_id).unlink(missing_ok=True)
        self._release(staged)

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

    def delete(self, block_ids: Iterable[bytes]) -> None:
        """Remove blocks: index rows first, so a crash never leaves a row without a file."""
        ids = list(block_ids)
        self.index.remove_blocks(ids)
        for bid in ids:
            self.path(bid).unlink(missing_ok=True)
        self._recount()

    def _recount(self) -> None:
        with self._lock:
            self._used = self.index.used_bytes() + sum(size for size, _ in self._pending.values())

    def quarantine(self, block_id: bytes) -> Path:
        """Move a damaged block file aside (kept for inspection) and forget it."""
        self.index.remove_blocks([block_id])
        self._recount()
        dest = self.quarantine_dir / block_id.hex()
        src = self.path(block_id)
        if src.exists():
            shutil.move(src, dest)
        return dest

    def gc(self) -> int:
        """Delete blocks no pinned object needs; returns how many."""
        ids = self.index.unreferenced_blocks()
        self.delete(ids)
        return len(ids)
