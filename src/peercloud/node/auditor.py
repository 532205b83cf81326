"""Storage audits: holders prove what they announced, one random leaf at a time.

A claim (HAVE) is only counted once the holder answers a challenge: for a sample of the
claimed blocks not yet proved, a random 64 KiB leaf and its Merkle path up to the block ID.
An audit costs one leaf per sampled block, not the block. Any wrong or missing answer drops
the holder's whole claim on that object to "unconfirmed", so a peer that lies in HAVE adds
no redundancy, and repair treats its blocks as missing. Proved claims are re-checked every
AUDIT_INTERVAL.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial

from peercloud.cloud.ledger import indexes_from_bitmap
from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.errors import IntegrityError, NotFoundError, PeercloudError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Holding, Index
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
AUDIT_SAMPLE = 4  # unproved blocks challenged per audit (plus one already proved)
AUDIT_INTERVAL = 3600.0  # seconds between re-audits of a proved claim
FAILED_RETRY = 60.0  # a failed holder is challenged again after this, or when it announces anew
AUDIT_TIMEOUT = 20.0
CONCURRENCY = 4
SCAN_EVERY = 10.0


def holding_due(h: Holding, now: float) -> bool:
    """Whether a claim needs a challenge now."""
    if h.failed_at is not None:
        return h.updated_at > h.failed_at or now - h.failed_at > FAILED_RETRY
    claimed = int.from_bytes(h.bitmap, "big")
    proved = int.from_bytes(h.confirmed.ljust(len(h.bitmap), b"\0")[: len(h.bitmap)], "big")
    if claimed & ~proved:
        return True
    return bool(claimed) and (h.checked_at is None or now - h.checked_at > AUDIT_INTERVAL)


class Auditor:
    """Challenges peers' claims and answers their challenges."""

    def __init__(
        self,
        index: Index,
        store: BlockStore,
        peers: PeerManager,
        manifest: Callable[[bytes], Awaitable[Manifest]],
    ) -> None:
        self.index = index
        self.store = store
        self.peers = peers
        self.manifest = manifest
        self._running: set[tuple[bytes, bytes]] = set()
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """Audit whenever claims change, and every SCAN_EVERY seconds."""
        seen, last = -1, 0.0
        while True:
            if self.peers.have_version != seen or time.monotonic() - last > SCAN_EVERY:
                seen, last = self.peers.have_version, time.monotonic()
                self.start_due()
            await self.peers.changed(1.0)

    def start_due(self) -> None:
        """Start an audit for every due claim of a connected peer."""
        now = time.time()
        cloud = {e.object_id for e in self.index.catalog()}
        for object_id, h in self.index.holdings():
            link = self.peers.links.get(PeerId(h.peer_id))
            key = (h.peer_id, object_id)
            # Only objects we care about: announcing made-up objects must not make us fetch anything.
            wanted = object_id in cloud or self.store.has(object_id)
            if link is not None and wanted and key not in self._running and holding_due(h, now):
                self._running.add(key)
                task = asyncio.get_running_loop().create_task(self._audit(link, object_id, h))
                task.add_done_callback(partial(_discard, self._running, key))

    async def _audit(self, link: PeerLink, object_id: bytes, h: Holding) -> None:
        async with self._gate:
            try:
                manifest = await self.manifest(object_id)
            except PeercloudError:
                return  # nobody serves the manifest yet: try on the next scan
            verdict = await audit(link, manifest, h)
        if verdict is None:
            return
        self.index.set_audit(h.peer_id, object_id, h.bitmap if verdict else b"", failed=not verdict)
        if not verdict:
            log.warning(
                "%s failed an audit of %s: its claim is not counted", PeerId(h.peer_id).short(), object_id.hex()[:12]
            )
        self.peers.have_version += 1  # holder maps and the ledger see the new confirmation

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Answer a peer's challenge from the local store."""
        if not isinstance(msg, m.Audit):
            return
        try:
            data = await asyncio.to_thread(self.store.get, msg.block)
            proof = merkle.prove(data, msg.leaf)
        except (NotFoundError, IntegrityError):
            link.respond(msg.id, m.Error(msg.id, "not_found", "block not held here"))
            return
        except IndexError:
            link.respond(msg.id, m.Error(msg.id, "bad_request", "no such leaf in this block"))
            return
        link.respond(msg.id, m.Proof(msg.id, msg.block, msg.leaf, proof.path), proof.leaf)


def _discard(running: set[tuple[bytes, bytes]], key: tuple[bytes, bytes], _: object) -> None:
    running.discard(key)


async def audit(link: PeerLink, manifest: Manifest, h: Holding) -> bool | None:
    """Challenge one claim: True proved, False failed, None inconclusive (link trouble)."""
    blocks = manifest.blocks()
    claimed = indexes_from_bitmap(h.bitmap, len(blocks))
    proved = set(indexes_from_bitmap(h.confirmed, len(blocks)))
    fresh = [i for i in claimed if i not in proved]
    sample = random.sample(fresh, min(AUDIT_SAMPLE, len(fresh)))
    old = [i for i in claimed if i in proved]
    sample += random.sample(old, min(1, len(old)))
    for i in sample:
        segment, _, block_id = blocks[i]
        size = manifest.share_size(segment)
        leaf = random.randrange(merkle.leaf_count(size))
        try:
            response = await link.call(m.Audit(link.next_id(), block_id, leaf), AUDIT_TIMEOUT)
        except PeerError as e:
            return False if e.code in ("not_found", "bad_request") else None
        proof = response.message
        assert isinstance(proof, m.Proof)
        if proof.leaf != leaf or not merkle.verify_proof(
            block_id, size, merkle.LeafProof(leaf, bytes(response.payload), proof.path)
        ):
            return False
    return True
