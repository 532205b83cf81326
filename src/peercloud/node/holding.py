"""Keeping blocks for the cloud: pulling share columns placement gives this node, rebuilding
columns nobody holds any more, releasing them, and unpinning; one object at a time."""

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from peercloud.cloud.ledger import ObjectStatus
from peercloud.content import erasure
from peercloud.content.manifest import Manifest
from peercloud.errors import RefusedError
from peercloud.identity import PeerId
from peercloud.node import retrieve
from peercloud.swarm import fetch

if TYPE_CHECKING:
    from peercloud.node.service import NodeService

log = logging.getLogger(__name__)
STATUS_WAIT = 2.0  # seconds to wait for peers to say what they hold of an object new to us


class Holding:
    """What this node keeps for the cloud, and the per-object lock its changes take."""

    def __init__(self, service: "NodeService") -> None:
        self.service = service
        # Held only while in use: a lock nobody holds or waits for goes, so deletes and pulls of
        # millions of objects leave no lock behind.
        self._locks: weakref.WeakValueDictionary[bytes, asyncio.Lock] = weakref.WeakValueDictionary()

    async def hold(self, object_id: bytes, shares: tuple[int, ...], class_name: str) -> None:
        """Keep share columns of an object for the cloud: pull what is missing, then announce.

        Blocks nobody holds any more (the only holder of an EC column left) are rebuilt from
        any k shares of their segment and checked against their IDs: no read key is needed.
        """
        manifest = await self.service.manifest(object_id)
        n, store = manifest.coding.n, self.service.node.store
        wanted = [(s, j) for s in range(manifest.segment_count) for j in shares if j < n]
        me = (
            self.service.membership.doc.member(self.service.node.identity.peer_id)
            if self.service.membership.doc
            else None
        )
        need = sum(manifest.share_size(s) for s, j in wanted if not store.has(manifest.block(s, j)))
        if me is not None and store.used + need > me.offer:
            raise RefusedError(f"holding {len(shares)} share column(s) would exceed this member's offer")
        async with self.lock(object_id):
            if not self.service.node.index.catalog(object_id):
                return  # deleted while this pull waited
            blocks = [manifest.block(s, j) for s, j in wanted]
            self.service.node.index.hold(object_id, [*blocks, object_id])
            self.service._record(manifest, "", None, pin=False)  # file names stay with those who have the read cap
            missing = [b for b in dict.fromkeys(blocks) if not store.has(b)]
            deadline = time.monotonic() + STATUS_WAIT
            while missing and not self.service.node.index.holdings(object_id) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a manifest just fetched: peers are answering our HAVE query
            holders = self.service._holders(manifest)
            online = set(self.service.peers.links)
            direct = [b for b in missing if holders(b) & online]
            if direct:
                await fetch.fetch(
                    self.service.peers, fetch.StoreSink(store), [fetch.Group([b], 1) for b in direct], holders
                )
            lost = [(s, j) for s, j in wanted if not store.has(manifest.block(s, j))]
            if lost and n > 1:
                await self._rebuild(manifest, lost, holders)
            self.service._announce(object_id)

    async def _rebuild(
        self, manifest: Manifest, lost: list[tuple[int, int]], holders: Callable[[bytes], set[PeerId]]
    ) -> None:
        store, k, n = self.service.node.store, manifest.coding.k, manifest.coding.n
        segments = sorted({s for s, _ in lost})
        groups = []
        for s in segments:
            others = [manifest.block(s, j) for j in range(n) if not store.has(manifest.block(s, j))]
            have = n - len(others)
            if have < k:
                groups.append(fetch.Group([b for b in others if holders(b) & set(self.service.peers.links)], k - have))
        if groups:
            await fetch.fetch(self.service.peers, fetch.StoreSink(store), groups, holders)

        def rebuild() -> None:
            for s, j in lost:
                shares = retrieve.read_segment_blocks(store, manifest, s)
                ciphertext = bytes(erasure.decode(manifest.coding, shares, manifest.ciphertext_length(s)))
                store.put(erasure.encode(manifest.coding, ciphertext)[j], expect=manifest.block(s, j))

        await asyncio.to_thread(rebuild)
        log.info("rebuilt %d lost share(s) of %s", len(lost), manifest.object_id.hex()[:12])
        # The other shares were only needed to decode: what nothing keeps goes again.
        helpers = [manifest.block(s, j) for s in segments for j in range(n)]
        await self.drop(manifest.object_id, helpers)

    async def release(self, object_id: bytes, shares: tuple[int, ...]) -> None:
        """Stop keeping share columns for the cloud, unless this node is one of their keepers.

        Whoever asks, and however many holders are asked at once, the keeper rule
        (`cloud/keepers.py`) keeps the class whole. Blocks nothing else keeps are deleted.
        """
        if not self.service.node.store.has(object_id):
            return
        if self.service.node.index.is_pinned(object_id):
            raise RefusedError("pinned by hand on this node")
        async with self.lock(object_id):
            manifest = self.service.node.manifest(object_id)
            n = manifest.coding.n
            asked = {j for j in shares if j < n}
            allowed = self.service.reconciler.releasable(object_id, asked)
            blocks = [manifest.block(s, j) for s in range(manifest.segment_count) for j in sorted(allowed)]
            if blocks:
                self.service.node.index.release(object_id, blocks)
                await self.drop(object_id, blocks)
            if asked - allowed:
                raise RefusedError(
                    f"the class needs this node's share column(s) {sorted(asked - allowed)}: "
                    "it is one of their keepers among the proved, online holders"
                )

    async def drop(self, object_id: bytes, blocks: list[bytes]) -> None:
        """Delete those of `blocks` nothing keeps any more, and say so."""
        stored = [b for b in dict.fromkeys(blocks) if self.service.node.store.has(b)]
        kept = self.service.node.index.kept(stored)
        doomed = [b for b in stored if b not in kept]
        await asyncio.to_thread(self.service.node.store.delete, doomed)
        self.service.reconciler.dirty.add(object_id)
        self.service._announce(object_id)

    def lock(self, object_id: bytes) -> asyncio.Lock:
        """Pulls, releases and unpins of one object run one at a time."""
        lock = self._locks.get(object_id)
        if lock is None:
            lock = self._locks[object_id] = asyncio.Lock()
        return lock

    async def unpin(self, text: str) -> ObjectStatus:
        """Drop this node's copy, unless it keeps a column the class needs (it is a keeper)."""
        object_id = self.service.node.resolve(text).object_id
        async with self.lock(object_id):
            status = self.service.ledger(object_id)
            n = max(1, status.n)
            needed = set(range(n)) - self.service.reconciler.releasable(object_id, set(range(n)))
            if status.storage_class is not None and needed:
                unit = "copies" if n == 1 else "shares per segment"
                left = replace(status, holders=tuple(h for h in status.holders if not h.is_self)).redundancy()
                raise RefusedError(
                    f"refusing to unpin: this node keeps a copy class {status.storage_class.name} needs; without it"
                    f" the object would have {left.available} {unit} proved online, below its keepers'"
                )
            self.service.node.index.unpin(object_id)
            self.service.node.index.release(object_id)
            self.service.node.index.hold(object_id, [object_id])  # the manifest stays: the ledger still needs its shape
            await self.drop(object_id, [bid for _, _, bid in self.service.node.manifest(object_id).blocks()])
        return self.service.ledger(object_id)
