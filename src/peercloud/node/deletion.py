"""Deleting a cloud object with its holders' agreement, and telling honestly where copies remain.

`delete` signs the removal into this node's catalog log (an owner's `remove`, or an admin's
`erase` that ends every owner's entry), after noting who held the object: the members that
announced blocks of it, and the outsiders that did, or fetched its manifest, whom no delete can
reach. The log carries the delete to every member, durably, and to members that were away
before their HAVEs count (`node/catalog.py`). Each member that sees an object leave the catalog
by a delete drops its blocks, its pin too unless `[store] keep_pins` says it refuses to, keeps
a tombstone and sends a signed receipt to its members (again on every link, while the tombstone
lasts). The deleter keeps the receipts, and challenges former holders with storage audits: one
that still proves a block kept the data. `report` sorts the holders by all of that.
"""

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable

from peercloud.cloud import catalog, deletion
from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.errors import FormatError, NotFoundError, PeercloudError, RefusedError
from peercloud.identity import Identity, PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.node.catalog import CatalogSync
from peercloud.node.membership import Membership
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Index
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
RM_WAIT = 10.0  # seconds `rm` waits for the receipts of holders that are online
KEPT_DELAY = 2.0  # a former holder is challenged this long after its receipt (or its link) comes
CHALLENGES = 4  # blocks challenged per former holder
CHALLENGE_TIMEOUT = 15.0
RECHECKS_PER_LINK = 32  # issued deletes whose former holder is challenged when its link comes up
SERVED_OBJECTS = 10_000  # objects whose outside fetchers are remembered (since the daemon started)
SERVED_PER_OBJECT = 64  # outside fetchers remembered per object
KEEP_FOR = 30 * 86400.0  # tombstones, and answered deletes, are dropped after this


class Deletions:
    """Issues deletes, carries them out here, and gathers what holders answered."""

    def __init__(
        self,
        identity: Identity,
        index: Index,
        store: BlockStore,
        peers: PeerManager,
        membership: Membership,
        catalog_sync: CatalogSync,
        manifest: Callable[[bytes], Awaitable[Manifest]],
        keep_pins: bool,
        lock: Callable[[bytes], asyncio.Lock],
    ) -> None:
        self.identity = identity
        self.me = identity.peer_id
        self.index = index
        self.store = store
        self.peers = peers
        self.membership = membership
        self.catalog = catalog_sync
        self.manifest = manifest
        self.keep_pins = keep_pins
        self.lock = lock  # the object's: a pull for placement never runs across its deletion
        self.served: dict[bytes, set[PeerId]] = {}  # object -> outsiders that fetched its manifest here
        self._served_lock = threading.Lock()  # `on_served` runs in the block server's threads
        self._tasks: set[asyncio.Task[None]] = set()
        self._answered = asyncio.Event()
        self._resumed = False  # deletes a crash interrupted are finished at the first member link
        self._queue: dict[bytes, None] = {}  # objects to delete here, in order, by one worker
        self._worker: asyncio.Task[None] | None = None
        # Owner keys other than ours this node removes entries for (buckets' owner keys).
        self.owner_keys: Callable[[], set[bytes]] = set

    # -- issuing a delete

    async def delete(self, object_id: bytes, own_only: bool = False) -> deletion.Report:
        """Delete an object of the cloud as its owner (its entry goes; the object goes with the
        last owner's) or as an admin (outright, unless `own_only`: `reclass` never takes an
        object from its other owners); return the report once online holders answered."""
        doc = self.membership.doc
        if doc is None:
            raise RefusedError("this node is in no cloud: `peercloud rm` deletes the cloud's objects")
        if not self.index.catalog(object_id):
            raise NotFoundError(f"object {object_id.hex()[:12]} is not in the cloud's catalog (deleted already?)")
        puts = [e for e in self.index.owned_entries(object_id) if e.kind == catalog.PUT]
        keys = {self.me.public_key} | self.owner_keys()
        mine = {e.owner for e in puts if e.owner in keys}  # the owners we remove the object for
        admin = doc.is_admin(self.me)
        if not mine and (not admin or own_only):
            raise RefusedError(
                f"object {object_id.hex()[:12]} is not yours: only its owners or an admin of the cloud can delete it"
            )
        others = len({e.owner for e in puts} - keys)
        now = max([time.time(), *(e.at + 0.001 for e in puts)])  # after every entry it ends
        holders, outsiders = self._copies(object_id, {x.peer_id for x in doc.members})
        try:
            raw: bytes | None = (await self.manifest(object_id)).encode()
        except PeercloudError:
            raw = None  # no one has the manifest: no copy can be challenged either
        outright = admin and not own_only and (others > 0 or not mine)  # an owner removes its own entry
        if outright or others == 0:
            self.index.add_deletion(object_id, now, holders, outsiders, raw, 0)
        else:
            self.index.add_deletion(object_id, now, [], [], None, others)  # the object stays theirs
        me = self.me.public_key
        if outright:
            entries = [catalog.owned(catalog.Op(catalog.ERASE, object_id, now), me, doc.class_map)]
        else:
            op = catalog.Op(catalog.REMOVE, object_id, now)
            entries = [catalog.owned(op, owner, doc.class_map, me) for owner in sorted(mine)]
        gone = self.index.put_own(entries, erasures=[(object_id, now)] if outright else [])
        self.catalog.flush_soon()
        self.on_gone(sorted(gone))
        await self._wait_for_online(object_id, holders)
        found = self.report(object_id)
        assert found is not None
        return found

    def _copies(self, object_id: bytes, members: set[PeerId]) -> tuple[list[bytes], list[bytes]]:
        """Members holding blocks of the object (this node included), and outsiders that announced
        or fetched it."""
        claimants = {PeerId(h.peer_id) for _, h in self.index.holdings(object_id) if h.bitmap.strip(b"\0")}
        if self.index.get_object(object_id) is not None:
            claimants.add(self.me)
        with self._served_lock:
            fetched = set(self.served.get(object_id, ()))
        outsiders = {p for p in claimants if p not in members} | fetched
        return [p.public_key for p in claimants & members], [p.public_key for p in outsiders]

    async def _wait_for_online(self, object_id: bytes, holders: list[bytes]) -> None:
        deadline = time.monotonic() + RM_WAIT
        while time.monotonic() < deadline:
            answered = {peer for peer, _, _ in self.index.receipts(object_id)}
            online = {p.public_key for p in self.peers.links} | {self.me.public_key}
            if all(h in answered or h not in online for h in holders):
                return
            self._answered.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._answered.wait()
            except TimeoutError:
                return

    def report(self, object_id: bytes) -> deletion.Report | None:
        """Where the copies of an object this node deleted stand, or None if it deleted none."""
        found = self.index.deletion(object_id)
        if found is None:
            return None
        at, holders, outsiders, _, others = found
        receipts, kept = {}, set()
        for peer, status, still in self.index.receipts(object_id):
            if status:
                receipts[PeerId(peer)] = status
            if still:
                kept.add(PeerId(peer))
        return deletion.report(
            object_id, at, [PeerId(p) for p in holders], [PeerId(p) for p in outsiders], receipts, kept, others
        )

    # -- carrying deletes out here

    def on_gone(self, objects: list[bytes]) -> None:
        """Objects left the catalog by a delete: drop them here and answer with a receipt (an
        owner's departure releases its objects' holds in `drop_author` instead)."""
        self._queue.update(dict.fromkeys(objects))  # one worker: a million deletes are no million tasks
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            object_id = next(iter(self._queue))
            del self._queue[object_id]
            try:
                self._remove_own_entry(object_id)
                await self._delete_here(object_id)
            except PeercloudError as e:
                log.warning("could not delete %s here: %s (it is finished at the next start)", object_id.hex()[:12], e)

    def _remove_own_entry(self, object_id: bytes) -> None:
        """An admin erased an object we own: our log says so too, so the delete outlives the
        admin's log (a removed admin's goes)."""
        doc = self.membership.doc
        keys, me = {self.me.public_key} | self.owner_keys(), self.me.public_key
        own = [e for e in self.index.owned_entries(object_id) if e.owner in keys and e.kind == catalog.PUT]
        if own and doc is not None:
            at = max(time.time(), *(e.at + 0.001 for e in own))
            op = catalog.Op(catalog.REMOVE, object_id, at)
            self.index.put_own([catalog.owned(op, e.owner, doc.class_map, me) for e in own])
            self.catalog.flush_soon()

    async def _delete_here(self, object_id: bytes) -> None:
        async with self.lock(object_id):
            await self._delete_locked(object_id)

    async def _delete_locked(self, object_id: bytes) -> None:
        doc = self.membership.doc
        if doc is None or self.index.catalog(object_id):
            return  # added again meanwhile
        # A member that held nothing of it answers too: the deleter may have listed it from a
        # claim it no longer had, and must not wait for it forever.
        key = self.me.public_key
        if self.keep_pins and self.index.is_pinned(object_id):
            self.index.release(object_id)
            receipt = deletion.Receipt.sign(self.identity, doc.cloud_id, object_id, deletion.REFUSED, time.time())
            self.index.add_tombstone(object_id, key, receipt.at, receipt.status, receipt.encode())
            log.warning("kept %s: a member deleted it, and this node keeps what it pinned", object_id.hex()[:12])
        else:
            # The tombstone is kept with the record's end, before the blocks go: after a cut
            # between the two, `resume` finds the blocks by the manifest and deletes them.
            receipt = deletion.Receipt.sign(self.identity, doc.cloud_id, object_id, deletion.DELETED, time.time())
            blocks = self.index.forget_object(object_id, key, receipt.at, receipt.encode())
            gone = await asyncio.to_thread(self._drop_blocks, object_id, blocks)
            log.info("deleted %s (%d blocks) as a member asked", object_id.hex()[:12], len(gone))
        self._answered.set()  # our own receipt is kept with the tombstone
        notice = m.DeleteReceipts((receipt.encode(),))
        for link in self._member_links():
            link.notify(notice)

    def _drop_blocks(self, object_id: bytes, blocks: list[bytes]) -> list[bytes]:
        """Delete a forgotten object's blocks that nothing else keeps: those its record listed and
        those its manifest names while it is still stored (its record may be gone already)."""
        with contextlib.suppress(PeercloudError):  # not stored, or damaged: the record's list is all
            blocks = [*blocks, *(bid for _, _, bid in Manifest.decode(self.store.get(object_id)).blocks())]
        return self.store.delete([*blocks, object_id], self.index.kept)

    def resume(self) -> None:
        """Finish the deletes a crash interrupted here: a removal the catalog kept whose blocks,
        record or tombstone did not follow (no later batch would bring it again)."""
        unfinished = self.index.unfinished_deletions()
        if unfinished:
            log.info("finishing %d delete(s) a crash interrupted", len(unfinished))
            self.on_gone(unfinished)

    # -- receipts and audits

    def on_link(self, link: PeerLink) -> None:
        """A member connected: hand it our receipts; challenge it if it held what we deleted."""
        if not self.membership.is_member(link.peer_id):
            return
        if not self._resumed:
            self._resumed = True
            self.resume()
        receipts = self.index.tombstone_receipts()
        for start in range(0, len(receipts), 64):
            link.notify(m.DeleteReceipts(tuple(receipts[start : start + 64])))
        assert link.peer_id is not None
        self._spawn(self._recheck(link, link.peer_id))

    def on_notice(self, link: PeerLink, msg: m.DeleteReceipts) -> None:
        """Receipts from a member, each signed by the member itself."""
        doc = self.membership.doc
        if doc is None or not self.membership.is_member(link.peer_id):
            return
        assert link.peer_id is not None
        for data in msg.receipts:
            cloud, object_id, holder = deletion.peek(data)
            issued = self.index.deletion(object_id)
            # Only the holder's own word, on a delete we issued, made after it (not an earlier
            # delete of the same object), is read; the signature is checked last, when it counts.
            if holder != link.peer_id.public_key or cloud != doc.cloud_id or issued is None:
                continue
            try:
                receipt = deletion.Receipt.decode(data)
            except FormatError as e:
                link.close(f"delete receipt refused: {e}")
                return
            if receipt.at >= issued[0] - catalog.FUTURE_SLACK:
                self._take(receipt, holder in issued[1])

    def on_served(self, peer: PeerId, block_id: bytes) -> None:
        """An outsider fetched a block here: if it is an object's manifest, note who has it (in the
        block server's worker thread: an index query per served block stays off the loop)."""
        if self.membership.is_member(peer) or not self.index.catalog(block_id):
            return
        with self._served_lock:
            if len(self.served) >= SERVED_OBJECTS and block_id not in self.served:
                del self.served[next(iter(self.served))]  # memory stays bounded: the oldest goes
            fetchers = self.served.setdefault(block_id, set())
            if len(fetchers) < SERVED_PER_OBJECT:
                fetchers.add(peer)

    def _take(self, receipt: deletion.Receipt, held: bool) -> None:
        """Keep a holder's receipt; one that held the object and says it deleted it is then
        challenged: its word is checked."""
        data = receipt.encode()
        if self.index.add_receipt(receipt.object_id, receipt.holder.public_key, receipt.status, data):
            self._answered.set()
            link = self.peers.links.get(receipt.holder)
            if held and receipt.status == deletion.DELETED and link is not None:
                self._spawn(self._challenge(link, receipt.object_id, KEPT_DELAY))

    async def _recheck(self, link: PeerLink, peer: PeerId) -> None:
        """Challenge a returning former holder on the deletes it has not answered, or said it did,
        once it holds every log as far as we do (so it had the delete to act on)."""
        await self.catalog.ready(link)
        for object_id in self.index.deletions_held_by(peer.public_key, RECHECKS_PER_LINK):
            await self._challenge(link, object_id, KEPT_DELAY)

    async def _challenge(self, link: PeerLink, object_id: bytes, delay: float) -> None:
        """Ask a former holder to prove blocks of a deleted object: an answer that checks is a kept copy."""
        await asyncio.sleep(delay)
        found = self.index.deletion(object_id)
        if found is None or found[3] is None or link.peer_id is None or link.closed.done():
            return
        manifest = Manifest.decode(found[3])
        blocks = [(seg, bid) for seg, _, bid in manifest.blocks()]
        for segment, block_id in random.sample(blocks, min(CHALLENGES, len(blocks))):
            size = manifest.share_size(segment)
            leaf = random.randrange(merkle.leaf_count(size))
            try:
                answer = await link.call(m.Audit(link.next_id(), block_id, leaf), CHALLENGE_TIMEOUT)
            except PeerError:
                continue
            proof = answer.message
            assert isinstance(proof, m.Proof)
            if proof.leaf == leaf and merkle.verify_proof(
                block_id, size, merkle.LeafProof(leaf, bytes(answer.payload), proof.path)
            ):
                log.warning("%s still holds %s after its deletion", link.peer_id.short(), object_id.hex()[:12])
                self.index.mark_kept(object_id, link.peer_id.public_key)
                return

    def prune(self) -> None:
        """Drop old tombstones and answered deletes (called now and then)."""
        self.index.prune_deletions(time.time() - KEEP_FOR)

    def _member_links(self) -> list[PeerLink]:
        return [lk for lk in list(self.peers.links.values()) if self.membership.is_member(lk.peer_id)]

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
