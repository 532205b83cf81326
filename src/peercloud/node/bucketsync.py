"""Bucket logs between members: heads gossiped, this node's batches written, others' read.

Every member keeps every bucket head a member signed (`names/log.py`), newest per (bucket,
epoch, writer), and sends them all to a member that connects; a writer sends its new head to
every member at once. A node that can read a bucket walks each writer's log back from its head
to the batch it read last, fetching the batch objects from their holders, and merges them.
This node's own entries are written to the index first (pending) and, a moment later, as the
next batch of its log: a cloud object of the bucket's class, then the head naming it.
"""

import asyncio
import dataclasses
import logging
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from peercloud.content.caps import ReadCap
from peercloud.errors import FormatError, PeercloudError
from peercloud.identity import Identity, PeerId
from peercloud.names import log as nlog
from peercloud.names.caps import BucketCap
from peercloud.net.link import PeerLink
from peercloud.node.ingest import AddResult
from peercloud.node.membership import Membership
from peercloud.store.index import Index, KeyRow, ObjectRecord
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
FLUSH_DELAY = 0.05  # a put's entry goes into a batch this soon, with those of the puts around it
MAX_LOGS_PER_WRITER = 4096  # bucket logs (bucket x epoch) one member may keep heads for here
READ_TIMEOUT = 60.0  # a batch object not fetched in this long stops a catch-up (retried later)
MAX_READ_BYTES = 256 * 1024 * 1024  # batches one catch-up of one log holds before merging them


class Service(Protocol):
    """What bucket sync uses of the node service."""

    peers: PeerManager
    membership: Membership

    async def add(
        self,
        path: Path,
        class_name: str | None,
        convergent: bool,
        progress: Callable[[int], None] | None,
        also: Callable[[sqlite3.Connection, ObjectRecord], None] | None = None,
        owner: bytes | None = None,
    ) -> AddResult:
        """Add a file to the cloud (more written in its transaction, owned by `owner`)."""
        ...

    async def read_object(self, cap: ReadCap, limit: int) -> bytes:
        """A small object's plaintext, fetched from its holders."""
        ...


def row_of(bucket_id: bytes, e: nlog.Entry) -> KeyRow:
    """An entry as the index keeps it (a KeyRow is an Entry with its bucket first)."""
    return KeyRow(bucket_id, *(getattr(e, f.name) for f in dataclasses.fields(e)))


def entry_of(r: KeyRow) -> nlog.Entry:
    """A kept row as the entry a batch carries."""
    return nlog.Entry(*(getattr(r, f.name) for f in dataclasses.fields(r)[1:]))


class BucketSync:
    """Heads in, heads out; this node's log written, the logs of buckets it reads merged."""

    def __init__(self, identity: Identity, index: Index, service: Service, scratch: Path) -> None:
        self.identity = identity
        self.me = identity.peer_id.public_key
        self.index = index
        self.service = service
        self.scratch = scratch  # where batch files are written before they are added
        self.clock = nlog.Clock()
        self._flushing: dict[bytes, asyncio.Task[None]] = {}
        self._reading: dict[bytes, asyncio.Task[None]] = {}
        self._again: set[bytes] = set()
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Objects whose last name here went with entries read from others (an owner deletes them);
        # batch objects of ours a crash left without a head (deleted).
        self.on_unnamed: Callable[[set[bytes]], None] = lambda _: None
        self.on_orphans: Callable[[list[bytes]], None] = lambda _: None

    def caps(self) -> dict[bytes, tuple[str, BucketCap]]:
        """Every bucket known here: ID -> (alias, cap)."""
        return {bid: (name, BucketCap.parse(cap)) for bid, name, cap, _ in self.index.buckets()}

    def lock(self, bucket_id: bytes) -> asyncio.Lock:
        """Held while this node writes a bucket's log (a flush, an unshare)."""
        return self._locks.setdefault(bucket_id, asyncio.Lock())

    # -- this node's log

    def flush_soon(self, bucket_id: bytes) -> None:
        """Our entries of a bucket changed: write them as the next batch of our log shortly."""
        task = self._flushing.get(bucket_id)
        if task is None or task.done():
            self._flushing[bucket_id] = self._spawn(self._flush_later(bucket_id))

    async def _flush_later(self, bucket_id: bytes) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        try:
            await self.flush(bucket_id)
        except PeercloudError as e:
            log.warning("bucket %s: entries not written yet: %s", bucket_id.hex()[:8], e)

    async def flush(self, bucket_id: bytes) -> None:
        """Write our pending entries of a bucket into batches of our log, each a cloud object,
        and send the new head to every member."""
        async with self.lock(bucket_id):
            while True:
                known = self.caps().get(bucket_id)
                if known is None or not known[1].writable:
                    return
                name, cap = known
                rows = await asyncio.to_thread(self.index.pending, bucket_id, self.me, nlog.MAX_OPS)
                if not rows:
                    return
                seq, last = self.index.bucket_log(bucket_id, cap.epoch, self.me)
                batch = nlog.Batch(bucket_id, cap.epoch, self.me, seq + 1, last, tuple(entry_of(r) for r in rows))
                owner = cap.owner_pair
                assert owner is not None

                def note(db: sqlite3.Connection, record: ObjectRecord) -> None:
                    self.index.note_batch(db, record.object_id, bucket_id)  # deleted if no head follows

                with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
                    path = Path(tmp) / f"{name}.index.{cap.epoch}.{seq + 1}"
                    path.write_bytes(batch.encode())
                    added = await self.service.add(path, cap.storage_class, False, None, also=note, owner=owner[0])
                oid, key = added.read_cap.object_id, added.read_cap.key
                head = nlog.Head.sign(self.identity, cap, nlog.certify(cap, self.me), seq + 1, oid, key)
                data = head.encode()
                await asyncio.to_thread(
                    self.index.log_names, bucket_id, cap.epoch, self.me, seq + 1, oid + key, data, rows
                )
                notice = m.BucketHeads((data,))
                for link in self._member_links():
                    link.notify(notice)

    def resume(self) -> None:
        """At start: entries a crash left pending are written; batch objects it left without a
        head go (the pending entries are written again, in a new batch)."""
        orphans = self.index.unpublished_batches()
        if orphans:
            self.on_orphans(orphans)
        for bucket_id in self.index.pending_buckets():
            self.flush_soon(bucket_id)

    # -- heads from members

    def on_link(self, link: PeerLink) -> None:
        """A member connected: send it every head of a member kept here, and catch up with the
        buckets we read (a catch-up a crash or a lost link cut short goes on from there)."""
        membership = self.service.membership
        if not membership.is_member(link.peer_id):
            return
        heads = [h for h in self.index.bucket_heads() if membership.is_member(PeerId(nlog.peek(h)[2]))]
        for start in range(0, len(heads), m.MAX_BUCKET_HEADS):
            link.notify(m.BucketHeads(tuple(heads[start : start + m.MAX_BUCKET_HEADS])))
        for bucket_id in self.caps():
            self.read_soon(bucket_id)

    def prune(self) -> None:
        """Heads of former members go: their logs can no longer grow, and newcomers never learn them."""
        doc = self.service.membership.doc
        if doc is None:
            return
        members = {x.peer_id.public_key for x in doc.members}
        gone = {nlog.peek(h)[2] for h in self.index.bucket_heads()} - members
        if gone:
            self.index.drop_heads_of(gone)

    def on_notice(self, link: PeerLink, msg: m.BucketHeads) -> None:
        """Heads from a member: newer ones are checked and kept; a bucket we read is read again."""
        membership = self.service.membership
        if not membership.is_member(link.peer_id):
            return
        readable = self.caps()
        for data in msg.heads:
            try:
                bucket, epoch, writer, seq = nlog.peek(data)
            except FormatError as e:
                link.close(f"bucket head refused: {e}")
                return
            held = self.index.bucket_head(bucket, epoch, writer)
            if (held is not None and held[0] >= seq) or writer == self.me:
                continue  # a replay, or our own log (ours to write)
            if not membership.is_member(PeerId(writer)):
                continue
            try:
                nlog.Head.decode(data)
            except FormatError as e:
                link.close(f"bucket head refused: {e}")
                return
            if self.index.keep_head(bucket, epoch, writer, seq, data, MAX_LOGS_PER_WRITER):
                known = readable.get(bucket)
                if known is not None and known[1].epoch == epoch:
                    self.read_soon(bucket)

    # -- reading the logs of a bucket

    def read_soon(self, bucket_id: bytes) -> None:
        """Catch up with a bucket's writers (again, if a catch-up is running)."""
        task = self._reading.get(bucket_id)
        if task is not None and not task.done():
            self._again.add(bucket_id)
            return
        self._reading[bucket_id] = self._spawn(self._read_all(bucket_id))

    async def caught_up(self, bucket_id: bytes) -> None:
        """Return once the catch-up running for a bucket (if any) ended."""
        while (task := self._reading.get(bucket_id)) is not None and not task.done():
            await asyncio.shield(task)

    async def _read_all(self, bucket_id: bytes) -> None:
        while True:
            self._again.discard(bucket_id)
            known = self.caps().get(bucket_id)
            if known is None:
                return
            cap = known[1]
            for data in self.index.heads_of(bucket_id, cap.epoch):
                writer = nlog.peek(data)[2]
                try:
                    head = nlog.Head.decode(data)
                    if head.signer != cap.signer or head.writer == self.me:
                        continue
                    await self._read_log(cap, head)
                except (PeercloudError, TimeoutError) as e:
                    log.warning("bucket %s: log of %s not read: %s", known[0], writer.hex()[:12], e)
            if bucket_id not in self._again:
                return

    async def _read_log(self, cap: BucketCap, head: nlog.Head) -> None:
        """Fetch a writer's batches newer than ours, newest first by their `prev` links, and once
        the chain reaches the batch we read last, merge them all and note how far we read, in
        one transaction: a log that breaks off, forks or loops merges nothing."""
        have, last = self.index.bucket_log(cap.bucket_id, cap.epoch, head.writer)
        if head.seq <= have:
            return
        seq, ref = head.seq, head.batch_id + head.batch_key(cap)
        newest, rows, size = ref, [], 0
        horizon = (int(time.time() * 1000) + nlog.FUTURE_SLACK_MS) << 16
        while seq > have:
            async with asyncio.timeout(READ_TIMEOUT):
                data = await self.service.read_object(ReadCap(ref[:32], ref[32:]), nlog.MAX_BATCH_BYTES)
            size += len(data)
            if size > MAX_READ_BYTES:
                raise FormatError(f"the log has more than {MAX_READ_BYTES >> 20} MiB to read at once")
            batch = await asyncio.to_thread(nlog.Batch.decode, data)
            if (batch.bucket_id, batch.epoch, batch.writer, batch.seq) != (cap.bucket_id, cap.epoch, head.writer, seq):
                raise FormatError(f"batch {seq} of a bucket log is not what its successor names")
            if seq == have + 1 and have and batch.prev != last:
                raise FormatError(f"the writer's batch {seq} follows another batch {have} than ours: a forked log")
            if any(e.hlc > horizon for e in batch.entries):
                raise FormatError(f"batch {seq} holds entries dated more than 10 minutes ahead: read again later")
            rows += [row_of(cap.bucket_id, e) for e in batch.entries]
            seq, ref = seq - 1, batch.prev
        for r in rows:
            self.clock.observe(r.hlc)
        read = (cap.epoch, head.writer, head.seq, newest)
        displaced = await asyncio.to_thread(self.index.merge_names, cap.bucket_id, rows, read)
        log.info("bucket %s: read %s's log to batch %d", cap.bucket_id.hex()[:8], head.writer.hex()[:12], head.seq)
        unnamed = {o for o in displaced if not self.index.names_of(o)}
        if unnamed:
            self.on_unnamed(unnamed)

    # -- internals

    def _member_links(self) -> list[PeerLink]:
        membership = self.service.membership
        return [lk for lk in list(self.service.peers.links.values()) if membership.is_member(lk.peer_id)]

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
