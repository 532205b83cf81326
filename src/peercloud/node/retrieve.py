"""Getting an object back in one pass: verified blocks -> decoded, decrypted segments -> output.

Blocks are verified, decoded and decrypted into a reused aligned buffer as they arrive (from
peers or from the local store) and written at their segment's offset; nothing is stored on the
way. The output is a `PartialFile` beside the destination, renamed into place once every
segment is in, with a journal of the segments already durable so an interrupted get resumes
without fetching them again; or memory, for a bucket's index batches.
"""

import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Protocol

from peercloud.cloud.ledger import bitmap_from_indexes
from peercloud.content import cipher, merkle
from peercloud.content.manifest import Manifest
from peercloud.content.segment import SegmentCodec
from peercloud.errors import IntegrityError, NotFoundError
from peercloud.fsutil import aligned_buffer
from peercloud.node.pipeline import ordered_map
from peercloud.store.blockstore import BlockStore
from peercloud.store.partial import PartialFile
from peercloud.swarm.fetch import Group

Progress = Callable[[int], None]


def read_segment_blocks(
    store: BlockStore, manifest: Manifest, segment: int, shares: dict[int, bytes | memoryview] | None = None
) -> dict[int, bytes | memoryview]:
    """Any k verified blocks of one segment (`shares` already at hand, the rest from the store),
    or an error naming the blocks that failed."""
    k = manifest.coding.k
    shares = {} if shares is None else shares
    problems: list[str] = []
    for share in range(manifest.coding.n):
        if len(shares) >= k:
            return shares
        if share in shares:
            continue
        try:
            shares[share] = store.get(manifest.block(segment, share))
        except (IntegrityError, NotFoundError) as e:
            problems.append(str(e))
    if len(shares) >= k:
        return shares
    detail = "; ".join(problems)
    raise IntegrityError(f"segment {segment}: only {len(shares)} of the {k} blocks needed are readable: {detail}")


def check_key(manifest: Manifest, key: bytes) -> None:
    """Reject a key that is not the object's before reading any data."""
    if cipher.key_check(key) != manifest.key_check:
        raise IntegrityError("the read cap's key does not belong to this object (wrong or altered cap)")


class Output(Protocol):
    """Where a get's plaintext goes, segment by segment, in any order."""

    done: set[int]  # segments already in (a resumed get skips them)

    def write(self, segment: int, plaintext: memoryview) -> None:
        """Put one segment's plaintext at its offset (thread-safe)."""

    def finish(self) -> None:
        """Every segment is in."""

    def read(self, segment: int, length: int) -> bytes:
        """A segment written before (to re-create its blocks for other fetchers)."""


class MemoryOutput:
    """A small object's plaintext in memory (a bucket's index batch): nothing touches the disk."""

    def __init__(self, manifest: Manifest) -> None:
        self.data = bytearray(manifest.size)
        self.segment_size = manifest.segment_size
        self.done: set[int] = set()

    def write(self, segment: int, plaintext: memoryview) -> None:
        """Copy the segment into place."""
        at = segment * self.segment_size
        self.data[at : at + len(plaintext)] = plaintext

    def finish(self) -> None:
        """Nothing to make durable."""

    def read(self, segment: int, length: int) -> bytes:
        """A segment written before."""
        at = segment * self.segment_size
        return bytes(self.data[at : at + length])


class SegmentWriter:
    """Blocks in, plaintext segments out: the fetch sink of a get (and the local get's worker).

    A segment is written once `k` verified shares of it are at hand: those that arrived plus
    those the local store holds. Shares wait in memory only until their segment completes, so
    memory is bounded by the blocks in flight.
    """

    def __init__(self, store: BlockStore, manifest: Manifest, key: bytes, output: Output) -> None:
        check_key(manifest, key)
        self.store, self.manifest, self.output = store, manifest, output
        self.object_id = manifest.object_id
        self._codec = SegmentCodec(key, manifest.coding)
        self._written = set(output.done)  # segments whose blocks can be re-created for other fetchers
        self._where = {bid: (seg, share) for seg, share, bid in manifest.blocks()}
        if len(self._where) != len(manifest.blocks()):  # peercloud never writes one: a crafted manifest
            raise IntegrityError(f"the manifest of {manifest.object_id.hex()[:12]} lists a block twice")
        self._need: dict[int, int] = {}  # segment -> shares to receive before it can be written
        self._arrived: dict[int, dict[int, bytes | memoryview]] = {}
        self._lock = threading.Lock()

    def plan(self) -> tuple[list[Group], list[int]]:
        """What to fetch for the segments not written yet, and the segments the store alone
        can give (written by `write_local`)."""
        coding, groups, local = self.manifest.coding, [], []
        for seg in range(self.manifest.segment_count):
            if seg in self.output.done:
                continue
            missing = [b for b in (self.manifest.block(seg, j) for j in range(coding.n)) if not self.store.has(b)]
            need = coding.k - (coding.n - len(missing))
            if need <= 0:
                local.append(seg)
            else:
                self._need[seg] = need
                groups.append(Group(missing, need))
        return groups, local

    def accept(self, block_id: bytes, data: bytes | memoryview) -> int:
        """Verify a fetched block; write its segment once enough shares of it arrived."""
        if merkle.block_id(data) != block_id:
            raise IntegrityError(f"block {block_id.hex()} failed verification")
        seg, share = self._where[block_id]
        with self._lock:
            arrived = self._arrived.setdefault(seg, {})
            if seg not in self._need or share in arrived:
                return len(data)  # an endgame duplicate, or a spare share of a segment written
            arrived[share] = data
            if len(arrived) < self._need[seg]:
                return len(data)
            del self._need[seg], self._arrived[seg]
        self._write(seg, arrived)
        return len(data)

    def finish(self) -> None:
        """Every segment is written: the output is complete (checked, not assumed)."""
        with self._lock:
            left = self.manifest.segment_count - len(self._written)
        if left:
            raise IntegrityError(f"{left} segment(s) of {self.object_id.hex()[:12]} were never written")
        self.output.finish()

    def flush(self) -> None:
        """Segments are written as they complete: nothing is left to make count."""

    def write_local(self, segment: int) -> int:
        """Write a segment from the local store alone; returns its plaintext length."""
        self._write(segment, {})
        return self.manifest.segment_length(segment)

    def _write(self, seg: int, shares: dict[int, bytes | memoryview]) -> None:
        shares = read_segment_blocks(self.store, self.manifest, seg, shares)  # the rest are here
        buf = aligned_buffer(self.manifest.segment_size + cipher.TAG_SIZE)  # this thread's, reused
        with memoryview(buf) as view:
            plain = self._codec.open_into(seg, shares, self.manifest.ciphertext_length(seg), view)
            try:
                self.output.write(seg, plain)
            finally:
                plain.release()
        with self._lock:
            self._written.add(seg)

    def block(self, block_id: bytes) -> bytes | None:
        """One block of a segment already written, re-created from its plaintext (encrypt,
        erasure-code) and checked against its ID; None when its segment is not written yet."""
        where = self._where.get(block_id)
        if where is None:
            return None
        seg, share = where
        with self._lock:
            if seg not in self._written:
                return None
        try:
            plaintext = self.output.read(seg, self.manifest.segment_length(seg))
        except OSError:  # the get just ended and its file moved on
            return None
        data = self._codec.seal(seg, plaintext)[share]
        return data if merkle.block_id(data) == block_id else None

    def bitmap(self) -> bytes:
        """The blocks `block` can give now: every share of each segment written."""
        n = self.manifest.coding.n
        with self._lock:
            written = list(self._written)
        return bitmap_from_indexes(len(self._where), (seg * n + j for seg in written for j in range(n)))


def get_to_file(
    store: BlockStore,
    manifest: Manifest,
    key: bytes,
    out: Path,
    *,
    workers: int,
    progress: Progress | None = None,
) -> None:
    """Write the object's plaintext to `out` from local blocks, atomically (resuming a partial
    file an interrupted get left there)."""
    check_key(manifest, key)
    partial = PartialFile(out, manifest.object_id, manifest.size, manifest.segment_size)
    try:
        writer = SegmentWriter(store, manifest, key, partial)
        groups, local = writer.plan()
        if groups:
            raise IntegrityError(f"{sum(g.need for g in groups)} blocks of this object are not stored here")
        if progress and partial.done:
            progress(sum(manifest.segment_length(s) for s in partial.done))
        with closing(ordered_map(writer.write_local, local, workers)) as results:
            for length in results:
                if progress:
                    progress(length)
        writer.finish()
    except BaseException as e:
        partial.abandon(e)
        raise
