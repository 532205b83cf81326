"""The node online: the local store plus peers, the upload service, swarm fetch and the ledger.

`peercloud up` runs one NodeService; the REST API calls into it. Blocking work (hashing,
encryption, disk) runs in threads so the event loop keeps serving peers meanwhile.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peercloud import __version__
from peercloud.cloud.ledger import ObjectStatus, bitmap_from_indexes, indexes_from_bitmap, object_status
from peercloud.content.caps import ReadCap
from peercloud.content.manifest import Manifest
from peercloud.errors import NotFoundError, UsageError
from peercloud.identity import PeerId
from peercloud.net.link import Address, listen
from peercloud.node import ingest, retrieve
from peercloud.node.ingest import MANIFEST_SEGMENT
from peercloud.node.local import LocalNode
from peercloud.store.index import ObjectRecord
from peercloud.swarm import fetch
from peercloud.swarm.peers import PeerManager
from peercloud.swarm.upload import block_server
from peercloud.wire import messages as m

Progress = Callable[[int], None]
log = logging.getLogger(__name__)


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


class NodeService:
    """A LocalNode connected to its peers."""

    def __init__(self, node: LocalNode, listen_on: Address) -> None:
        self.node = node
        self.listen_on = listen_on
        self.started = time.time()
        self.listening: list[str] = []
        self._server: asyncio.Server | None = None
        self._closed_bytes = [0, 0]
        hello = m.Hello(m.PROTOCOL_VERSION, ("blocks", "have"), f"peercloud/{__version__}")
        self.peers = PeerManager(node.identity, hello, node.index, block_server(node.store), self.local_haves)

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
        self.peers.start()

    async def stop(self) -> None:
        """Close links and the listener."""
        await self.peers.stop()
        if self._server is not None:
            self._server.close()

    # -- what we hold

    def local_bitmap(self, object_id: bytes) -> bytes | None:
        """Our HAVE bitmap for an object, or None when we know nothing of it."""
        local = self.node.index.local_indexes(object_id)
        if local is None:
            return None
        rec = self.node.index.get_object(object_id)
        total = (rec.total_blocks - 1) if rec else 0
        return bitmap_from_indexes(total, local)

    def local_haves(self) -> list[tuple[bytes, bytes]]:
        """(object, bitmap) for everything we hold some of, sent to each new link."""
        out = []
        for rec in self.node.index.objects():
            bitmap = self.local_bitmap(rec.object_id)
            if bitmap is not None and rec.local_blocks:
                out.append((rec.object_id, bitmap))
        return out

    def _announce(self, object_id: bytes) -> None:
        bitmap = self.local_bitmap(object_id)
        if bitmap is not None:
            self.peers.announce(object_id, bitmap)

    # -- operations

    async def add(
        self, path: Path, class_name: str | None, convergent: bool, progress: Progress | None
    ) -> ingest.AddResult:
        """Add a file, then tell connected peers we hold it."""
        result = await asyncio.to_thread(self.node.add, path, class_name, convergent=convergent, progress=progress)
        self._announce(result.manifest.object_id)
        return result

    def _holders(self, manifest: Manifest) -> Callable[[bytes], set[PeerId]]:
        """Which connected-or-not peers announced each block; rebuilt only when HAVEs change."""
        ids = [bid for _, _, bid in manifest.blocks()]
        version = -1
        table: dict[bytes, set[PeerId]] = {}

        def holders(bid: bytes) -> set[PeerId]:
            nonlocal version, table
            if version != self.peers.have_version:
                table = {}
                for raw, bitmap, _ in self.node.index.holdings(manifest.object_id):
                    pid = PeerId(raw)
                    for i in indexes_from_bitmap(bitmap, len(ids)):
                        table.setdefault(ids[i], set()).add(pid)
                version = self.peers.have_version
            return table.get(bid, set())

        return holders

    async def manifest(self, object_id: bytes) -> Manifest:
        """The object's manifest, fetched from peers when it is not here."""
        if not self.node.store.has(object_id):
            known = {PeerId(raw) for raw, _, _ in self.node.index.holdings(object_id)}

            def holders(_: bytes) -> set[PeerId]:
                return known or set(self.peers.links)  # nobody announced it: ask everyone

            try:
                await fetch.fetch(
                    self.peers, self.node.store, [fetch.Group([object_id], 1)], holders, stall_timeout=3.0
                )
            except fetch.FetchError:
                raise NotFoundError(
                    f"unknown object {object_id.hex()}: not stored here and no connected peer has it"
                ) from None
        return self.node.manifest(object_id)

    async def _gather(self, manifest: Manifest, all_blocks: bool, progress: Progress | None) -> None:
        store, coding = self.node.store, manifest.coding
        groups = []
        for seg in range(manifest.segment_count):
            shares = [manifest.block(seg, j) for j in range(coding.n)]
            have = sum(1 for b in shares if store.has(b))
            if all_blocks:
                groups += [fetch.Group([b], 1) for b in shares if not store.has(b)]
            else:
                groups.append(fetch.Group([b for b in shares if not store.has(b)], coding.k - have))
        await fetch.fetch(self.peers, store, groups, self._holders(manifest), progress)

    def _record(self, manifest: Manifest, name: str, key: bytes | None, pin: bool) -> None:
        index = self.node.index
        existing = index.get_object(manifest.object_id)
        record = ObjectRecord(
            manifest.object_id,
            existing.name if existing else name,
            manifest.size,
            existing.storage_class if existing else "-",
            existing.added_at if existing else time.time(),
            key,
        )
        blocks = [*manifest.blocks(), (MANIFEST_SEGMENT, 0, manifest.object_id)]
        index.add_object(record, blocks, pin=pin)

    async def get(self, text: str, out: Path | None, progress: Progress | None) -> tuple[Path, Manifest]:
        """Fetch what is missing from the swarm, then decrypt to `out`."""
        cap = self.node.resolve(text)
        if not isinstance(cap, ReadCap):
            raise UsageError("a verify cap or object ID cannot decrypt: give the read cap (pcr1_…)")
        manifest = await self.manifest(cap.object_id)
        retrieve.check_key(manifest, cap.key)
        out = out or self.node.default_output(text)
        started = time.perf_counter()
        await self._gather(manifest, all_blocks=False, progress=progress)
        fetched = time.perf_counter()
        self._record(manifest, out.name, cap.key, pin=False)  # a name known here is kept
        self._announce(manifest.object_id)
        result = await asyncio.to_thread(self.node.get, str(cap), out)
        log.info(
            "get %s: %.2f s gathering blocks, %.2f s decrypting to %s",
            manifest.object_id.hex()[:12],
            fetched - started,
            time.perf_counter() - fetched,
            out,
        )
        return result

    async def pin(self, text: str, progress: Progress | None) -> Manifest:
        """Fetch and keep every block of an object; needs only its verify cap."""
        cap = self.node.resolve(text)
        manifest = await self.manifest(cap.object_id)
        await self._gather(manifest, all_blocks=True, progress=progress)
        self._record(manifest, cap.object_id.hex()[:12], cap.key if isinstance(cap, ReadCap) else None, pin=True)
        self._announce(manifest.object_id)
        return manifest

    def status(self, text: str) -> tuple[ObjectStatus, Manifest, ObjectRecord | None]:
        """The ledger's view of one object."""
        return object_status_of(self.node, text, set(self.peers.links))

    def node_status(self) -> NodeStatus:
        """Uptime, addresses, peers and traffic."""
        links = list(self.peers.links.values())
        objects = self.node.index.objects()
        return NodeStatus(
            str(self.node.identity.peer_id),
            __version__,
            time.time() - self.started,
            self.listening,
            len(links),
            len(self.node.index.peers()),
            sum(lk.conn.bytes_in for lk in links),
            sum(lk.conn.bytes_out for lk in links),
            len(objects),
            self.node.store.used,
        )


def object_status_of(
    node: LocalNode, text: str, online: set[PeerId]
) -> tuple[ObjectStatus, Manifest, ObjectRecord | None]:
    """Ledger view from the index alone (works without the daemon: peers then show offline)."""
    cap = node.resolve(text)
    manifest = node.manifest(cap.object_id)
    total = len(manifest.block_ids) // 32
    local = [i for i, (_, _, bid) in enumerate(manifest.blocks()) if node.store.has(bid)]
    peers = [
        (str(PeerId(raw)), bitmap, PeerId(raw) in online, when)
        for raw, bitmap, when in node.index.holdings(cap.object_id)
    ]
    status = object_status(cap.object_id, total, str(node.identity.peer_id), local, peers)
    return status, manifest, node.index.get_object(cap.object_id)
