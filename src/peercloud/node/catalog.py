"""Catalog sync between members: digests on connect, differing buckets pulled from one peer.

A member that connects sends its catalog digest (`cloud/catalog.py`); a receiver whose digest
differs pulls the differing buckets from that peer with `catalog_want`, a page (≤ 60 KB) per
request and one index transaction per page, and then tells its members its new digest. One
pull runs at a time, so a new member fetches the catalog once, not once per member. A peer
streams its HAVEs to a member only once their digests agree (or after READY_WAIT), so HAVEs
never arrive for objects the receiver has yet to learn — and are never dropped for that.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from peercloud.cloud.catalog import Digest, in_buckets, shape_problem
from peercloud.content.manifest import Manifest
from peercloud.errors import NotFoundError
from peercloud.net.link import PeerError, PeerLink
from peercloud.node.membership import Membership
from peercloud.store.index import CatalogEntry, Index
from peercloud.swarm.peers import PeerManager
from peercloud.wire import batches
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
READY_WAIT = 20.0  # seconds a HAVE stream waits for catalogs to agree before it goes anyway
PAGE_TIMEOUT = 30.0
SCAN = 1000  # catalog rows read per index query while filling a page


class CatalogSync:
    """Keeps this node's catalog in step with its members'."""

    def __init__(self, index: Index, peers: PeerManager, membership: Membership) -> None:
        self.index = index
        self.peers = peers
        self.membership = membership
        self.digest = Digest()
        self._theirs: dict[PeerLink, bytes] = {}
        self._agreed: dict[PeerLink, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.load()

    def load(self) -> None:
        """Rebuild the digest from the index (at start, and after leaving the cloud)."""
        self.digest = Digest()
        after = b""
        while page := self.index.catalog_after(after, 5000):
            for e in page:
                self.digest.add(e)
            after = page[-1].object_id

    # -- entries from anywhere

    def accept(self, link: PeerLink | None, items: Iterable[batches.CatalogItem]) -> list[CatalogEntry]:
        """Keep possible entries of known classes from a member (or this node), in one transaction."""
        entries = self._possible(link, items)
        return self._counted(self.index.put_catalog_many(entries)) if entries else []

    def _possible(self, link: PeerLink | None, items: Iterable[batches.CatalogItem]) -> list[CatalogEntry]:
        """Entries whose shape is possible and class known; an impossible one closes the link."""
        doc = self.membership.doc
        if doc is None:
            return []
        now, entries = time.time(), []
        for it in items:
            problem = shape_problem(it.total_blocks, it.k, it.n, it.size)
            if problem is not None:
                if link is not None:
                    link.close(f"catalog entry with an impossible shape: {problem}")
                return []
            if it.storage_class in doc.class_map:  # an unknown class would never be placed
                entries.append(CatalogEntry(it.object_id, it.storage_class, it.total_blocks, it.k, it.n, it.size, now))
        return entries

    def _counted(self, new: list[CatalogEntry]) -> list[CatalogEntry]:
        for e in new:
            self.digest.add(e)
        return new

    def bring(self, manifest_of: Callable[[bytes], Manifest]) -> tuple[list[CatalogEntry], list[str]]:
        """Objects this node added before it was in the cloud join its catalog (each under its own
        class when the cloud has one of that coding): (entries brought, why others were not)."""
        classes = self.membership.classes
        brought, skipped = [], []
        for object_id in self.index.local_only():
            record = self.index.get_object(object_id)
            try:
                manifest = manifest_of(object_id)
            except NotFoundError:
                skipped.append(f"{object_id.hex()[:12]}: its manifest is not stored here")
                continue
            coding = manifest.coding
            same = [c for c in classes.values() if c.coding == coding]
            named = classes.get(record.storage_class) if record else None
            cls = named if named is not None and named.coding == coding else (same[0] if same else None)
            if cls is None:
                skipped.append(f"{object_id.hex()[:12]}: the cloud has no class of coding {coding.k}-of-{coding.n}")
                continue
            total = len(manifest.blocks())
            entry = CatalogEntry(object_id, cls.name, total, coding.k, coding.n, manifest.size, time.time())
            if self.index.bring(entry):
                self.added_here(entry)
                brought.append(entry)
        return brought, skipped

    def added_here(self, entry: CatalogEntry) -> None:
        """This node added an object to the cloud (its add's transaction listed it): tell members."""
        self.digest.add(entry)
        msg = m.Catalog(entry.object_id, entry.storage_class, entry.total_blocks, entry.k, entry.n, entry.size)
        for link in self._member_links():
            link.notify(msg)

    # -- links and gossip

    def on_link(self, link: PeerLink) -> None:
        """A member connected: send our digest; its HAVE stream waits for agreement."""
        if self.membership.is_member(link.peer_id):
            self._agreed[link] = asyncio.Event()
            link.closed.add_done_callback(lambda _: self._forget(link))
            link.notify(m.CatalogDigest(self.digest.encode()))
            # Its digest may have come in the same read as the end of the handshake, before us.
            theirs = self._theirs.get(link)
            if theirs is not None and not any(self.digest.differs(theirs)):
                self._agree(link)

    async def ready(self, link: PeerLink) -> None:
        """Return once our catalogs agree (or READY_WAIT passed): then this link's HAVEs may flow."""
        agreed = self._agreed.get(link)
        if agreed is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_WAIT):  # not wait_for: it can swallow a cancel
                    await agreed.wait()

    def on_notice(self, link: PeerLink, msg: m.Message) -> None:
        """Catalog and digest notices from members (others are ignored)."""
        if not self.membership.is_member(link.peer_id):
            return
        if isinstance(msg, m.Catalog):
            self.accept(link, [batches.CatalogItem(msg.object, msg.cls, msg.total, msg.k, msg.n, msg.size)])
        elif isinstance(msg, m.CatalogDigest):
            try:
                differs = any(self.digest.differs(msg.digest))
            except ValueError as e:
                link.close(str(e))
                return
            if link not in self._theirs:
                link.closed.add_done_callback(lambda _: self._forget(link))
            self._theirs[link] = msg.digest
            if not differs:
                self._agree(link)
                return
            task = asyncio.get_running_loop().create_task(self._pull(link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Serve a page of entries in the asked buckets, to members only."""
        assert isinstance(msg, m.CatalogWant)
        if not self.membership.is_member(link.peer_id):
            await link.answer(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
            return
        packed, more = await asyncio.to_thread(self._page, msg.buckets, msg.after)
        await link.answer(msg.id, m.CatalogPage(msg.id, packed, more))

    # -- internals

    def _page(self, buckets: bytes, after: bytes) -> tuple[bytes, bool]:
        items: list[batches.CatalogItem] = []
        size = 0
        while rows := self.index.catalog_after(after, SCAN):
            for e in rows:
                after = e.object_id
                if not in_buckets(e.object_id, buckets):
                    continue
                item = batches.CatalogItem(e.object_id, e.storage_class, e.total_blocks, e.k, e.n, e.size)
                size += 49 + len(e.storage_class.encode())
                items.append(item)
                if size > batches.BATCH_BYTES - 200:
                    return b"".join(batches.pack_catalog(items)), True
        return b"".join(batches.pack_catalog(items)), False

    async def _pull(self, link: PeerLink) -> None:
        """Fetch the buckets where `link`'s catalog differs from ours, one pull at a time."""
        async with self._lock:
            theirs = self._theirs.get(link)
            if theirs is None:
                return
            buckets = self.digest.differs(theirs)
            learned, after = 0, b""
            try:
                while any(buckets):
                    answer = await link.call(m.CatalogWant(link.next_id(), buckets, after), PAGE_TIMEOUT)
                    page = answer.message
                    assert isinstance(page, m.CatalogPage)
                    items = batches.unpack_catalog(page.entries)
                    entries = self._possible(link, items)
                    # The transaction runs in a worker thread: a 1,000-entry page must not stall the loop.
                    learned += len(self._counted(await asyncio.to_thread(self.index.put_catalog_many, entries)))
                    if not page.more or not items:
                        break
                    after = items[-1].object_id
            except (PeerError, m.ProtocolError) as e:
                log.info("catalog sync with %s stopped: %s", link.peer_id.short() if link.peer_id else "?", e)
            if learned:
                log.info("learned %d catalog entries from %s", learned, link.peer_id.short() if link.peer_id else "?")
                digest = m.CatalogDigest(self.digest.encode())
                for other in self._member_links():
                    other.notify(digest)
            for lk, their in list(self._theirs.items()):
                if not any(self.digest.differs(their)):
                    self._agree(lk)

    def _agree(self, link: PeerLink) -> None:
        agreed = self._agreed.get(link)
        if agreed is not None:
            agreed.set()

    def _forget(self, link: PeerLink) -> None:
        self._theirs.pop(link, None)
        self._agreed.pop(link, None)

    def _member_links(self) -> list[PeerLink]:
        return [lk for lk in list(self.peers.links.values()) if self.membership.is_member(lk.peer_id)]
