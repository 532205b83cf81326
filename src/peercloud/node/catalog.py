"""Catalog sync between members: every member's signed log, compared by heads, pulled by author.

Each member writes its own entries (`cloud/catalog.py`) into a log of signed batches: an add
commits its entry unlogged, and a moment later (or at start, after a crash) this node signs what
is unlogged as the next batch and sends it to its members. A member that connects sends its
heads (per author, the last batch it holds); a receiver that holds less of some log pulls the
rest of that log from that peer, a page of batches per request, each batch checked (signature,
root, author a member, next in its log, within the cap) before one transaction keeps it. A peer
streams its HAVEs to a member only once their heads agree (or after READY_WAIT), so HAVEs never
arrive for objects the receiver has yet to learn, and are never dropped for that.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from peercloud.cloud import catalog
from peercloud.cloud.document import CloudDoc
from peercloud.content.manifest import Manifest
from peercloud.errors import FormatError, NotFoundError, RefusedError
from peercloud.identity import Identity, PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.node.membership import Membership
from peercloud.store.index import CatalogEntry, Index, OwnedEntry
from peercloud.swarm.peers import PeerManager
from peercloud.wire import batches
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
READY_WAIT = 20.0  # seconds a HAVE stream waits for catalogs to agree before it goes anyway
PAGE_TIMEOUT = 30.0
FLUSH_DELAY = 0.05  # an add's entry is signed this soon after, with those of the adds around it
MAX_AUTHORS = 4096  # heads one member may send: more than a cloud has members


class CatalogSync:
    """Keeps this node's catalog in step with its members'."""

    def __init__(self, identity: Identity, index: Index, peers: PeerManager, membership: Membership) -> None:
        self.identity = identity
        self.me = identity.peer_id.public_key
        self.index = index
        self.peers = peers
        self.membership = membership
        self.heads: dict[bytes, tuple[int, int]] = {}  # author -> (last batch, entries logged)
        self._theirs: dict[PeerLink, dict[PeerId, int]] = {}
        self._agreed: dict[PeerLink, asyncio.Event] = {}
        self._pulling: set[bytes] = set()  # authors a pull runs for (from one peer at a time)
        self._flushing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Objects whose entries an owner's departure or a lie changed (placement looks again), and our own entries
        # once members have their batch (then our HAVEs of them may go: never before the entry).
        self.on_changed: Callable[[set[bytes]], None] = lambda _: None
        self.on_logged: Callable[[list[bytes]], None] = lambda _: None
        # Objects that left the catalog: by a delete (True), or with their only owner (False).
        self.on_gone: Callable[[list[bytes], bool], None] = lambda _, __: None
        self.load()

    def load(self) -> None:
        """Read the heads from the index (at start, and after leaving the cloud)."""
        self.heads = self.index.catalog_heads()

    # -- this node's own log

    def flush_soon(self) -> None:
        """Our entries changed (an add, a bring, a removal): sign them into our log shortly."""
        if self._flushing is None or self._flushing.done():
            self._flushing = self._spawn(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        doc = self.membership.doc
        while doc is not None and (entries := self.index.unlogged(self.me, catalog.MAX_OPS)):
            seq = self.heads.get(self.me, (0, 0))[0] + 1  # only this task writes our log
            ops = [catalog.op_of(e) for e in entries]
            data = catalog.Batch.sign(self.identity, doc.cloud_id, seq, time.time(), ops).encode()
            await asyncio.to_thread(self.index.log_own, self.me, seq, data, entries)
            self._advance(self.me, seq, len(entries))
            notice = m.CatalogBatch(data)
            for link in self._member_links():
                link.notify(notice)
            self.on_logged([e.object_id for e in entries])

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
            total, now = len(manifest.blocks()), time.time()
            op = catalog.Op(catalog.PUT, object_id, now, cls.name, total, coding.k, coding.n, manifest.size)
            if self.index.bring(catalog.owned(op, self.me, classes)):
                brought.append(CatalogEntry(object_id, cls.name, total, coding.k, coding.n, manifest.size, now))
        if brought:
            self.flush_soon()
        return brought, skipped

    def check_manifest(self, manifest: Manifest) -> None:
        """Entries whose shape the object's manifest belies stop counting: an owner lied."""
        bad = [
            e.owner
            for e in self.index.owned_entries(manifest.object_id)
            if e.kind == catalog.PUT and catalog.manifest_problem(e, manifest) is not None
        ]
        if bad:
            log.warning(
                "catalog entries of %s by %d owner(s) belie its manifest: dropped",
                manifest.object_id.hex()[:12],
                len(bad),
            )
            self.index.mark_bad(manifest.object_id, bad)
            self.on_changed({manifest.object_id})

    def on_doc(self, old: CloudDoc | None, new: CloudDoc) -> None:
        """A new document version: departed members' logs go; redefined classes rank again
        (their objects are re-placed under the new definition)."""
        self._prune()
        if old is not None and old.class_map != new.class_map:
            ranks = {name: catalog.rank(cls) for name, cls in new.class_map.items()}
            ranks |= {name: 0 for name in old.class_map if name not in new.class_map}
            touched = self.index.rerank(ranks)
            self.on_changed(
                touched
                | {
                    e.object_id
                    for e in self.index.catalog()
                    if old.class_map.get(e.storage_class) != new.class_map.get(e.storage_class)
                }
            )

    # -- links and gossip

    def on_link(self, link: PeerLink) -> None:
        """A member connected: send our heads; its HAVE stream waits for agreement."""
        if self.membership.is_member(link.peer_id):
            self._prune()
            self._agreed[link] = asyncio.Event()
            link.closed.add_done_callback(lambda _: self._forget(link))
            link.notify(m.CatalogHeads(self._packed_heads()))
            if self._caught_up(link):  # its heads may have come in the same read as the handshake's end
                self._agree(link)
            self.flush_soon()  # what a crash left unsigned

    async def ready(self, link: PeerLink) -> None:
        """Return once our catalogs agree (or READY_WAIT passed): then this link's HAVEs may flow."""
        agreed = self._agreed.get(link)
        if agreed is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_WAIT):  # not wait_for: it can swallow a cancel
                    await agreed.wait()

    def on_notice(self, link: PeerLink, msg: m.Message) -> None:
        """Batches and heads from members (others are ignored)."""
        if not self.membership.is_member(link.peer_id):
            return
        if isinstance(msg, m.CatalogBatch):
            self._take_one(link, msg.batch)
        elif isinstance(msg, m.CatalogHeads):
            try:
                theirs = catalog.unpack_heads(msg.heads, MAX_AUTHORS)
            except FormatError as e:
                link.close(str(e))
                return
            if link not in self._theirs:
                link.closed.add_done_callback(lambda _: self._forget(link))
            self._theirs[link] = theirs
            self._prune()
            for author, seq in theirs.items():
                if seq > self.heads.get(author.public_key, (0, 0))[0]:
                    self._pull_soon(link, author.public_key)
            if self._caught_up(link):
                self._agree(link)

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Serve a page of an author's batches, to members only."""
        assert isinstance(msg, m.CatalogWant)
        if not self.membership.is_member(link.peer_id):
            await link.answer(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
            return
        found = await asyncio.to_thread(self.index.catalog_batches, msg.author, msg.after, batches.BATCH_BYTES)
        head = self.heads.get(msg.author, (0, 0))[0]
        await link.answer(msg.id, m.CatalogPage(msg.id, tuple(found), msg.after + len(found) < head))

    # -- internals

    def _take_one(self, link: PeerLink, data: bytes) -> None:
        """A batch a member pushed, kept before the next message on the link is read (the owner's
        HAVEs follow it and would be dropped for an object we do not know yet); a gap in the
        author's log means we missed some: pull them."""
        try:
            batch = catalog.Batch.decode(data)  # one signature and at most MAX_OPS hashes: a few ms
        except FormatError as e:
            link.close(f"catalog batch refused: {e}")
            return
        author = batch.author.public_key
        if author == self.me or author in self._pulling:
            return  # our own log is ours to write; a running pull will bring it
        head = self.heads.get(author, (0, 0))[0]
        if batch.seq > head + 1:
            self._pull_soon(link, author)
        elif batch.seq == head + 1:
            try:
                entries, erasures = self._entries(batch)
            except RefusedError as e:
                log.info("catalog batch from %s refused: %s", _who(link), e)
                return
            touched = self.index.append_batch(author, batch.seq, data, entries, erasures)
            self._advance(author, batch.seq, len(batch.ops))
            self._gone(touched)
            self._tell_heads()

    def _entries(self, batch: catalog.Batch) -> tuple[list[OwnedEntry], list[tuple[bytes, float]]]:
        """Check a decoded batch against our cloud: the entries to keep and the erasures that
        count (an admin's only; another member's erase ends nothing), or RefusedError."""
        doc = self.membership.doc
        if doc is None:
            raise RefusedError("not in a cloud")
        author = batch.author.public_key
        head, logged = self.heads.get(author, (0, 0))
        batch.check(doc.cloud_id, [x.peer_id for x in doc.members], head, logged, time.time())
        erasures = [(op.object_id, op.at) for op in batch.ops if op.kind == catalog.ERASE]
        entries = [catalog.owned(op, author, doc.class_map) for op in batch.ops]
        return entries, erasures if doc.is_admin(batch.author) else []

    def _gone(self, touched: set[bytes], deleted: bool = True) -> None:
        gone = [o for o in touched if not self.index.catalog(o)]
        if gone:
            self.on_gone(gone, deleted)

    def _pull_soon(self, link: PeerLink, author: bytes) -> None:
        if author not in self._pulling:
            self._pulling.add(author)
            self._spawn(self._pull(link, author))

    async def _pull(self, link: PeerLink, author: bytes) -> None:
        """Fetch the rest of one author's log from `link`, page by page."""
        learned = 0
        try:
            while True:
                head = self.heads.get(author, (0, 0))[0]
                answer = await link.call(m.CatalogWant(link.next_id(), author, head), PAGE_TIMEOUT)
                page = answer.message
                assert isinstance(page, m.CatalogPage)
                for data in page.batches:
                    batch = await asyncio.to_thread(catalog.Batch.decode, data)
                    if batch.author.public_key != author:
                        raise FormatError("catalog page holds another author's batch")
                    # Pushes of this author wait for the pull (`_pulling`): nobody else moves its head.
                    entries, erasures = self._entries(batch)
                    touched = await asyncio.to_thread(
                        self.index.append_batch, author, batch.seq, data, entries, erasures
                    )
                    self._advance(author, batch.seq, len(batch.ops))
                    self._gone(touched)
                    learned += 1
                if not page.more or not page.batches:
                    break
        except FormatError as e:
            link.close(f"catalog batch refused: {e}")
        except RefusedError as e:
            log.warning("catalog log of %s from %s refused: %s", author.hex()[:12], _who(link), e)
        except (PeerError, m.ProtocolError) as e:
            log.info("catalog sync with %s stopped: %s", _who(link), e)
        finally:
            self._pulling.discard(author)
        if learned:
            log.info("learned %d catalog batch(es) of %s from %s", learned, author.hex()[:12], _who(link))
            self._tell_heads()

    def _tell_heads(self) -> None:
        """Our heads moved: members that hold less pull from us; links now in step may flow."""
        heads = m.CatalogHeads(self._packed_heads())
        for other in self._member_links():
            other.notify(heads)
        for link in list(self._theirs):
            if self._caught_up(link):
                self._agree(link)

    def _advance(self, author: bytes, seq: int, ops: int) -> None:
        logged = self.heads.get(author, (0, 0))[1]
        self.heads[author] = (seq, logged + ops)

    def _caught_up(self, link: PeerLink) -> bool:
        theirs = self._theirs.get(link)
        return theirs is not None and all(
            seq <= self.heads.get(a.public_key, (0, 0))[0] for a, seq in theirs.items() if self.membership.is_member(a)
        )

    def _prune(self) -> None:
        """Logs of authors no longer members go, and with them their entries."""
        doc = self.membership.doc
        if doc is None:
            return
        members = {x.peer_id.public_key for x in doc.members}
        for author in [a for a in self.heads if a not in members]:
            touched = self.index.drop_author(author)
            del self.heads[author]
            self.on_changed(touched)
            self._gone(touched, deleted=False)
            log.info("dropped the catalog log of former member %s (%d objects)", author.hex()[:12], len(touched))

    def _packed_heads(self) -> bytes:
        return catalog.pack_heads({PeerId(a): seq for a, (seq, _) in self.heads.items()})

    def _agree(self, link: PeerLink) -> None:
        agreed = self._agreed.get(link)
        if agreed is not None:
            agreed.set()

    def _forget(self, link: PeerLink) -> None:
        self._theirs.pop(link, None)
        self._agreed.pop(link, None)

    def _member_links(self) -> list[PeerLink]:
        return [lk for lk in list(self.peers.links.values()) if self.membership.is_member(lk.peer_id)]

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _who(link: PeerLink) -> str:
    return link.peer_id.short() if link.peer_id else "?"
