"""The node online: the local store plus peers, the upload service, swarm fetch and the ledger.

`peercloud up` runs one NodeService; the REST API calls into it. Blocking work (hashing,
encryption, disk) runs in threads so the event loop keeps serving peers meanwhile.
"""

import asyncio
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peercloud import __version__
from peercloud.cloud.deletion import Report
from peercloud.cloud.document import CloudDoc
from peercloud.cloud.ledger import (
    ObjectStatus,
    indexes_from_bitmap,
)
from peercloud.connect.book import AddressBook
from peercloud.content.caps import ReadCap
from peercloud.content.manifest import MAX_MANIFEST_SIZE, Manifest
from peercloud.errors import IntegrityError, NotFoundError, UsageError
from peercloud.identity import PeerId
from peercloud.net.link import Address, PeerLink, listen
from peercloud.node import ingest, retrieve
from peercloud.node.auditor import Auditor
from peercloud.node.buckets import Buckets
from peercloud.node.bucketsync import BucketSync
from peercloud.node.catalog import CatalogSync
from peercloud.node.deletion import Deletions
from peercloud.node.holding import STATUS_WAIT, Holding
from peercloud.node.ingest import MANIFEST_SEGMENT
from peercloud.node.ledger_view import known_objects, ledger_view
from peercloud.node.local import LocalNode
from peercloud.node.membership import Membership
from peercloud.node.network import Network
from peercloud.node.reclass import Reclassed, reclass
from peercloud.node.reconciler import Reconciler
from peercloud.store.index import ObjectRecord
from peercloud.store.partial import PartialFile
from peercloud.swarm import fetch
from peercloud.swarm.live import LiveInventory, LiveSources
from peercloud.swarm.peers import PeerManager
from peercloud.swarm.upload import block_server
from peercloud.wire import messages as m

Progress = Callable[[int], None]
MAX_BLOCKS = MAX_MANIFEST_SIZE // 32  # the most blocks a manifest can list
log = logging.getLogger(__name__)
PRUNE_EVERY = 60.0
OUTSIDER_TTL = 3600.0  # an outsider's claims outlive its link by this long
ANNOUNCE_EVERY = 0.25  # seconds between announcements of what a get in progress can serve


@dataclass(frozen=True)
class NodeStatus:
    """What `peercloud status --node` shows."""

    peer_id: str
    version: str
    uptime: float
    listen: list[str]
    peers_connected: int
    peers_known: int
    bytes_in: int
    bytes_out: int
    objects: int
    stored_bytes: int
    reachable: dict[str, Any]  # our signed record's candidates, observed addresses, records kept


class NodeService:
    """A LocalNode connected to its peers."""

    def __init__(self, node: LocalNode, listen_on: Address, roles: frozenset[str] = frozenset()) -> None:
        self.node = node
        self.listen_on = listen_on
        self.roles = roles
        self.started = time.time()
        self.listening: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        hello = m.Hello(m.PROTOCOL_VERSION, ("blocks", "have", "cloud", "audit"), f"peercloud/{__version__}")
        # Records are kept for members and peers this node keeps a link to: strangers fill nothing.
        self.book = AddressBook(
            node.identity, node.index, lambda pid: self.membership.is_member(pid) or self.peers.keeps(pid)
        )
        self.peers = PeerManager(
            node.identity,
            hello,
            node.index,
            self._on_request,
            self.book,
            member=lambda pid: self.membership.is_member(pid),
        )
        self.live = LiveSources()  # gets in progress: what they wrote is served to other fetchers
        self.peers.inventory = LiveInventory(node.index, self.live)
        self.peers.on_link = self._on_link
        self.peers.on_notice_extra = self._on_notice
        self.membership = Membership(node.identity, node.index, self.peers, lambda: self.listening)
        self.network = Network(
            node,
            self.peers,
            self.book,
            self.membership.is_member,
            lambda: self.listening,
            roles,
            lambda: self.membership.doc,
        )
        self.membership.directories = self.network.directories.configured
        self.membership.relays = self.network.relays.configured
        self.membership.on_invite = self.network.adopt
        self.membership.on_joined = self.network.remember
        self.catalog = CatalogSync(node.identity, node.index, self.peers, self.membership)
        self.membership.on_left = self.catalog.load
        self.peers.ready = self.catalog.ready
        self.catalog.on_logged = self._announce_all
        self.auditor = Auditor(node.index, self.read_block, self.peers, self.manifest, self.membership.is_member)
        self.reconciler = Reconciler(self)
        self.catalog.on_changed = self.reconciler.dirty.update
        self.membership.on_doc = self._on_doc
        self.peers.on_claims = self.reconciler.dirty.update
        self.auditor.on_proved = self.reconciler.dirty.add
        self.deletions = Deletions(
            node.identity,
            node.index,
            node.store,
            self.peers,
            self.membership,
            self.catalog,
            self.manifest,
            node.config.keep_pins,
            lambda object_id: self.holding.lock(object_id),
        )
        self.catalog.on_gone = self.deletions.on_gone
        self.bucket_sync = BucketSync(node.identity, node.index, self, node.home.path / "scratch")
        self.buckets = Buckets(self, self.bucket_sync)
        self.bucket_sync.on_unnamed = self.buckets.on_unnamed
        self.bucket_sync.on_orphans = self.buckets.on_orphans
        self.catalog.owners = self.buckets.owner_keys
        self.deletions.owner_keys = lambda: set(node.index.owner_seeds())
        self._serve_blocks = block_server(self.read_block, self.deletions.on_served)
        self.holding = Holding(self)  # what this node keeps for the cloud

    async def start(self) -> None:
        """Listen for peers and dial the known ones."""
        self._server = await listen(
            self.listen_on.host,
            self.listen_on.port,
            self.node.identity,
            self.peers.hello,
            self.peers.on_request,
            on_established=self.peers.register,
            on_notice=self.peers.on_notice,
        )
        self.listening = [str(Address(*s.getsockname()[:2])) for s in self._server.sockets]
        bound = Address.parse(self.listening[0])
        self.peers.local = lambda: bound
        await self.network.start()
        self.peers.start()
        self.membership.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.auditor.run()),
            loop.create_task(self.reconciler.run()),
            loop.create_task(self._prune()),
            loop.create_task(self._remove_leftovers()),
        ]
        shutil.rmtree(self.bucket_sync.scratch, ignore_errors=True)  # batch files a crash left unadded
        self.bucket_sync.scratch.mkdir(exist_ok=True)
        self.bucket_sync.resume()

    async def stop(self, timeout: float = 1.5) -> None:
        """Close the listener, links and background tasks, in at most `timeout` seconds whatever they do."""
        if self._server is not None:
            self._server.close()  # no new peers while the rest closes
        await self.network.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        peers = loop.create_task(self.peers.stop(timeout - 0.2))
        pending = {t for t in self._tasks if not t.done()}
        while pending and loop.time() < deadline:
            # Cancel again each round: asyncio.wait_for (Python 3.11) drops a cancel that lands as it
            # finishes, and a task that swallowed one (the auditor in peers.changed) would run forever.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        await asyncio.wait({peers}, timeout=max(0.0, deadline - loop.time()))
        if pending:
            log.warning("%d background task(s) still running after %.1f s of shutdown", len(pending), timeout)

    async def _remove_leftovers(self) -> None:
        """Delete what a crash left behind once at startup, as fsck would.

        Deletes are not directory-synced (a row goes first, then the file): after a power cut a
        deleted block can come back as a file no row names, and it would take disk space forever.
        """
        removed = await asyncio.to_thread(self.node.store.remove_leftovers)
        if removed:
            log.info("removed %d file(s) an interrupted write or delete left behind", removed)

    async def _prune(self) -> None:
        """Drop claims of peers outside the cloud an hour after they were last connected, and
        old tombstones and answered deletes."""
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            await asyncio.to_thread(self.deletions.prune)
            doc = self.membership.doc
            keep = {x.peer_id.public_key for x in doc.members} if doc else set()
            keep |= {pid.public_key for pid in self.peers.links}
            gone = await asyncio.to_thread(self.node.index.prune_holdings, keep, time.time() - OUTSIDER_TTL)
            if gone:
                log.info("dropped %d claims of peers outside the cloud", gone)

    # -- what peers ask and tell

    async def _on_request(self, link: PeerLink, msg: m.Message) -> None:
        if isinstance(msg, m.GetBlock):
            await self._serve_blocks(link, msg)
        elif isinstance(msg, m.Audit):
            await self.auditor.on_request(link, msg)
        elif isinstance(msg, m.Join | m.Leave):
            await self.membership.on_request(link, msg)
        elif isinstance(msg, m.CloudDocWant):
            await self.membership.on_want(link, msg)
        elif isinstance(msg, m.Place | m.Release):
            await self.reconciler.on_request(link, msg)
        elif isinstance(msg, m.CatalogWant):
            await self.catalog.on_request(link, msg)
        else:
            await self.network.on_request(link, msg)

    def _on_notice(self, link: PeerLink, msg: m.Message) -> None:
        if self.network.on_notice(link, msg):
            return
        if isinstance(msg, m.CloudDoc):
            self.membership.on_gossip(link, msg)
        elif isinstance(msg, m.CatalogBatch | m.CatalogHeads):
            self.catalog.on_notice(link, msg)
        elif isinstance(msg, m.DeleteReceipts):
            self.deletions.on_notice(link, msg)
        elif isinstance(msg, m.BucketHeads):
            self.bucket_sync.on_notice(link, msg)

    def _on_doc(self, old: CloudDoc | None, new: CloudDoc) -> None:
        self.catalog.on_doc(old, new)
        self.bucket_sync.prune()

    def _on_link(self, link: PeerLink) -> None:
        self.network.on_link(link)
        self.membership.on_link(link)
        self.catalog.on_link(link)
        self.deletions.on_link(link)
        self.bucket_sync.on_link(link)

    def _announce(self, object_id: bytes) -> None:
        self.peers.announce(object_id)

    def _announce_all(self, object_ids: list[bytes]) -> None:
        for oid in object_ids:
            self.peers.announce(oid)

    # -- operations

    async def add(
        self,
        path: Path,
        class_name: str | None,
        convergent: bool,
        progress: Progress | None,
        also: Callable[[sqlite3.Connection, ObjectRecord], None] | None = None,
        owner: bytes | None = None,
    ) -> ingest.AddResult:
        """Add a file, then tell connected peers we hold it; in a cloud, placement takes over.
        `also` writes more in the add's transaction (a bucket's name for the object); `owner`
        owns it in the catalog instead of this node (a bucket's owner key)."""
        doc = self.membership.doc
        result = await asyncio.to_thread(
            self.node.add,
            path,
            class_name,
            convergent=convergent,
            progress=progress,
            classes=doc.class_map if doc else None,
            also=also,
            owner=owner,
        )
        manifest = result.manifest
        if self.node.index.catalog(manifest.object_id):  # in a cloud: placement takes over
            self.catalog.flush_soon()  # announced once members have the entry
            self.reconciler.dirty.add(manifest.object_id)
        else:
            self._announce(manifest.object_id)
        return result

    def bring(self) -> dict[str, Any]:
        """Objects added before this node was in a cloud join it (placement takes over)."""
        brought, skipped = self.catalog.bring(self.node.manifest)
        for entry in brought:  # announced once members have the entry (they dropped our HAVEs till then)
            self.reconciler.dirty.add(entry.object_id)
        return {
            "brought": [e.object_id.hex() for e in brought],
            "skipped": skipped,
            "local_only": len(self.node.index.local_only()),
        }

    def _holders(self, manifest: Manifest) -> Callable[[bytes], set[PeerId]]:
        """Which connected-or-not peers announced each block; rebuilt only when HAVEs change."""
        ids = [bid for _, _, bid in manifest.blocks()]
        version = -1
        table: dict[bytes, set[PeerId]] = {}

        def holders(bid: bytes) -> set[PeerId]:
            nonlocal version, table
            if version != self.peers.have_version:
                table = {}
                for _, h in self.node.index.holdings(manifest.object_id):
                    if h.failed_at is not None and h.updated_at <= h.failed_at:
                        continue  # failed an audit since its last announcement: do not ask it
                    pid = PeerId(h.peer_id)
                    for i in indexes_from_bitmap(h.bitmap, len(ids)):
                        table.setdefault(ids[i], set()).add(pid)
                version = self.peers.have_version
            return table.get(bid, set())

        return holders

    async def manifest(self, object_id: bytes) -> Manifest:
        """The object's manifest, fetched from peers when it is not here."""
        if not self.node.store.has(object_id):
            known = {PeerId(h.peer_id) for _, h in self.node.index.holdings(object_id)}

            def holders(_: bytes) -> set[PeerId]:
                return known or set(self.peers.links)  # nobody announced it: ask everyone

            try:
                sink = fetch.StoreSink(self.node.store)
                await fetch.fetch(self.peers, sink, [fetch.Group([object_id], 1)], holders, stall_timeout=3.0)
            except fetch.FetchError:
                raise NotFoundError(
                    f"unknown object {object_id.hex()}: not stored here and no connected peer has it"
                ) from None
        if not self.node.index.holdings(object_id):
            self.peers.query(object_id)  # announcements made before we knew the object were not kept
        manifest = self.node.manifest(object_id)
        self.catalog.check_manifest(manifest)
        return manifest

    async def _read(self, manifest: Manifest, key: bytes, output: retrieve.Output, progress: Progress | None) -> None:
        """Fetch what the local store lacks into `output`, segment by segment, in one pass; other
        fetchers get the blocks of what is written meanwhile (`swarm/live.py`)."""
        writer = retrieve.SegmentWriter(self.node.store, manifest, key, output)
        # Only objects outside the cloud's catalog are served from a get (swarm/live.py): for the
        # cloud's own, announcing would only repeat the index's inventory four times a second.
        serving = not self.node.index.catalog(manifest.object_id)
        groups, local = writer.plan()
        if progress and output.done:
            progress(sum(manifest.segment_length(s) for s in output.done))  # a resumed get
        announced = 0.0

        def fetched(n: int) -> None:  # on the loop, per block
            nonlocal announced
            if progress:
                progress(n)
            if serving and time.monotonic() - announced >= ANNOUNCE_EVERY:
                announced = time.monotonic()
                self._announce(manifest.object_id)

        if serving:
            self.live.add(writer)
        try:
            await fetch.fetch(self.peers, writer, groups, self._holders(manifest), fetched)

            def rest() -> None:
                for seg in local:
                    length = writer.write_local(seg)
                    if progress:
                        progress(length)
                writer.finish()

            await asyncio.to_thread(rest)
        finally:
            if serving:
                self.live.remove(writer)
                self._announce(manifest.object_id)

    def read_block(self, block_id: bytes) -> bytes:
        """A verified block for a peer: from the store, or re-created by a get in progress (thread)."""
        try:
            return self.node.store.get(block_id)
        except NotFoundError:
            data = self.live.block(block_id)
            if data is None:
                raise
            return data

    def _record(self, manifest: Manifest, name: str, key: bytes | None, pin: bool) -> None:
        index = self.node.index
        existing = index.get_object(manifest.object_id)
        entries = index.catalog(manifest.object_id)
        record = ObjectRecord(
            manifest.object_id,
            existing.name if existing else name,
            manifest.size,
            entries[0].storage_class if entries else existing.storage_class if existing else "-",
            existing.added_at if existing else time.time(),
            key,
        )
        blocks = [*manifest.blocks(), (MANIFEST_SEGMENT, 0, manifest.object_id)]
        index.add_object(record, blocks, pin=pin)

    async def get(self, text: str, out: Path, progress: Progress | None) -> tuple[Path, Manifest]:
        """Fetch what the local store lacks from the swarm and write the plaintext to `out` in one
        pass (blocks are not stored); resumes a get of the same object to `out` cut short."""
        cap = self.node.resolve(text)
        if not isinstance(cap, ReadCap):
            raise UsageError("a verify cap or object ID cannot decrypt: give the read cap (pcr1_…)")
        manifest = await self.manifest(cap.object_id)
        retrieve.check_key(manifest, cap.key)
        started = time.perf_counter()
        partial = await asyncio.to_thread(PartialFile, out, manifest.object_id, manifest.size, manifest.segment_size)
        try:
            await self._read(manifest, cap.key, partial, progress)
        except BaseException as e:
            await asyncio.to_thread(partial.abandon, e)
            raise
        self._record(manifest, out.name, cap.key, pin=False)  # a name known here is kept
        log.info("get %s: %.2f s to %s", manifest.object_id.hex()[:12], time.perf_counter() - started, out)
        return out, manifest

    async def read_object(self, cap: ReadCap, limit: int) -> bytes:
        """A small object's plaintext in memory (a bucket's batch), fetched from holders; nothing
        fetched for this is stored."""
        manifest = await self.manifest(cap.object_id)
        retrieve.check_key(manifest, cap.key)
        if manifest.size > limit:
            raise IntegrityError(f"object {cap.object_id.hex()[:12]} is larger than {limit} bytes")
        output = retrieve.MemoryOutput(manifest)
        await self._read(manifest, cap.key, output, None)
        return bytes(output.data)

    async def pin(self, text: str, progress: Progress | None) -> Manifest:
        """Fetch and keep every block of an object; needs only its verify cap."""
        cap = self.node.resolve(text)
        manifest = await self.manifest(cap.object_id)
        missing = [bid for _, _, bid in manifest.blocks() if not self.node.store.has(bid)]
        await fetch.fetch(
            self.peers,
            fetch.StoreSink(self.node.store),
            [fetch.Group([b], 1) for b in missing],
            self._holders(manifest),
            progress,
        )
        self._record(manifest, cap.object_id.hex()[:12], cap.key if isinstance(cap, ReadCap) else None, pin=True)
        self._announce(manifest.object_id)
        return manifest

    def ledger(self, object_id: bytes) -> ObjectStatus:
        """The ledger's view of one object, with its class when the cloud knows it."""
        return ledger_view(self.node, object_id, set(self.peers.links), self.membership.doc)

    async def delete(self, text: str, force: bool = False) -> Report:
        """`rm`: delete an object of the cloud with its holders' agreement (`node/deletion.py`);
        refused while a bucket this node reads names it, unless `force`."""
        object_id = self.node.resolve(text).object_id
        if not force:
            self.buckets.check_unnamed(object_id)
        return await self.deletions.delete(object_id)

    async def reclass(self, text: str, class_name: str) -> Reclassed:
        """`reclass`: the object under another class of the cloud (`node/reclass.py`)."""
        return await reclass(self, text, class_name)

    def replan(self, object_id: bytes) -> None:
        """Have placement look at the object in its next round."""
        self.reconciler.dirty.add(object_id)

    def deletion(self, text: str) -> Report | None:
        """The report of a delete this node issued, once the object left the catalog."""
        object_id = self.node.resolve(text).object_id
        return None if self.node.index.catalog(object_id) else self.deletions.report(object_id)

    async def status(self, text: str) -> tuple[ObjectStatus, ObjectRecord | None, str]:
        """The ledger's view of one object, for `status OBJ`, with the placement note. Any peer can
        tell who holds what: for an object neither in our cloud's catalog nor stored here, the
        manifest comes from peers and they are asked what they hold of it."""
        object_id = self.node.resolve(text).object_id
        if not self.node.index.catalog(object_id) and not self.node.store.has(object_id):
            await self.manifest(object_id)  # asks peers for their HAVEs too
            deadline = time.monotonic() + STATUS_WAIT
            while not self.node.index.holdings(object_id) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return self.ledger(object_id), self.node.index.get_object(object_id), self.reconciler.notes.get(object_id, "")

    def summary(self) -> list[tuple[ObjectStatus, ObjectRecord | None]]:
        """Every object known here (the cloud's and local ones), for `status` without an object."""
        return [(self.ledger(oid), self.node.index.get_object(oid)) for oid in known_objects(self.node)]

    def node_status(self) -> NodeStatus:
        """Uptime, addresses, peers and traffic."""
        links = list(self.peers.links.values())
        return NodeStatus(
            str(self.node.identity.peer_id),
            __version__,
            time.time() - self.started,
            self.listening,
            len(links),
            len(self.node.index.peers()),
            sum(lk.conn.bytes_in for lk in links),
            sum(lk.conn.bytes_out for lk in links),
            self.node.index.object_count(),
            self.node.store.used,
            self.network.status(),
        )
