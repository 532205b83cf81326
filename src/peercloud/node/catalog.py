"""Catalog sync between members: every member's signed log, compared by heads, pulled by author.

Each member writes its own entries (`cloud/catalog.py`) into a log of signed batches: an add
commits its entry unlogged, and a moment later (or at start, after a crash) this node signs what
is unlogged as the next batch and sends it to its members. A member that connects sends its
heads (per author, the last batch it holds); a receiver that holds less of some log pulls the
rest of that log from that peer, a page of batches per request, each batch checked (signature,
root, author a member, next in its log, within the cap) before one transaction keeps it. A peer
streams its HAVEs to a member only once that member holds every log as far as it does (or after
READY_WAIT), so HAVEs never arrive for objects the receiver has yet to learn, and are never
dropped for that.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from peercloud.cloud import catalog
from peercloud.cloud.document import CloudDoc
from peercloud.content.manifest import Manifest
from peercloud.errors import FormatError, RefusedError
from peercloud.identity import Identity
from peercloud.net.link import PeerError, PeerLink
from peercloud.node import catalog_own
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
PULLS_PER_LINK = 8  # logs pulled from one member at once


class Head(NamedTuple):
    """Where one author's log stands here."""

    seq: int  # its last batch held (0: none)
    logged: int  # entries in the log
    digest: bytes  # the last batch's hash (what its next batch names as `prev`)


NO_HEAD = Head(0, 0, catalog.NO_PREV)


class CatalogSync:
    """Keeps this node's catalog in step with its members'."""

    def __init__(self, identity: Identity, index: Index, peers: PeerManager, membership: Membership) -> None:
        self.identity = identity
        self.me = identity.peer_id.public_key
        self.index = index
        self.peers = peers
        self.membership = membership
        self.heads: dict[bytes, Head] = {}
        self._theirs: dict[PeerLink, dict[bytes, tuple[int, bytes]]] = {}  # what each member holds
        self._agreed: dict[PeerLink, asyncio.Event] = {}
        self._pulling: dict[bytes, PeerLink] = {}  # authors a pull runs for, and from whom
        self._forked: set[bytes] = set()  # authors seen to sign two different logs (warned once)
        self._flushing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Objects whose class or owners changed (placement looks again); our own entries once
        # members have their batch (then our HAVEs of them may go: never before the entry);
        # objects that left the catalog by a delete.
        self.on_changed: Callable[[set[bytes]], None] = lambda _: None
        self.on_logged: Callable[[list[bytes]], None] = lambda _: None
        self.on_gone: Callable[[list[bytes]], None] = lambda _: None
        # Owner keys other than ours this node writes entries for (buckets' owner keys).
        self.owners: Callable[[], dict[bytes, Identity]] = dict
        self.load()

    def load(self) -> None:
        """Read the heads from the index (at start, and after leaving the cloud)."""
        self.heads = {a: Head(seq, n, catalog.digest(last)) for a, (seq, n, last) in self.index.catalog_heads().items()}

    # -- this node's own log

    def flush_soon(self) -> None:
        """Our entries changed (an add, a bring, a removal): sign them into our log shortly."""
        if self._flushing is None or self._flushing.done():
            self._flushing = self._spawn(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        doc = self.membership.doc
        while doc is not None and (entries := self.index.unlogged(self.me, catalog.MAX_OPS)):
            entries = self._redate(doc, entries)
            # One owner per batch: the first run of `unlogged`'s order (puts before removals, so
            # an object moving to another owner key is never left without one in between).
            owner = entries[0].owner
            entries = entries[: next((i for i, e in enumerate(entries) if e.owner != owner), len(entries))]
            grant = b""
            if owner != self.me:
                key = self.owners().get(owner)
                if key is None:
                    log.warning("catalog: entries for owner %s left unsigned: its key is gone", owner.hex()[:12])
                    return
                grant = catalog.grant(key, doc.cloud_id, self.me)
            head = self.heads.get(self.me, NO_HEAD)  # only this task writes our log
            ops = [catalog.op_of(e) for e in entries]
            data = catalog.Batch.sign(
                self.identity,
                doc.cloud_id,
                head.seq + 1,
                head.digest,
                time.time(),
                ops,
                owner if grant else b"",
                grant,
            ).encode()
            await asyncio.to_thread(self.index.log_own, self.me, head.seq + 1, data, entries)
            self.heads[self.me] = Head(head.seq + 1, head.logged + len(entries), catalog.digest(data))
            notice = m.CatalogBatch(data)
            for link in self._member_links():
                link.notify(notice)
            self.on_logged([e.object_id for e in entries])

    def _redate(self, doc: CloudDoc, entries: list[OwnedEntry]) -> list[OwnedEntry]:
        """Deletes left unsigned long enough to expire (a power cut, then days offline) are
        dated now, here as in the batch, so members take them (an erase then also ends what was
        added meanwhile, on every node alike)."""
        now = time.time()
        stale = [e for e in entries if e.kind != catalog.PUT and now - e.at > catalog.DELETE_EXPIRY / 2]
        if not stale:
            return entries
        fresh = [dataclasses.replace(e, at=now) for e in stale]
        admin = doc.is_admin(self.identity.peer_id)
        erasures = [(e.object_id, now) for e in fresh if e.kind == catalog.ERASE and admin and e.owner == self.me]
        self._gone(self.index.put_own(fresh, erasures))
        return self.index.unlogged(self.me, catalog.MAX_OPS)

    def bring(self, manifest_of: Callable[[bytes], Manifest]) -> tuple[list[CatalogEntry], list[str]]:
        """Objects this node added before it was in the cloud join its catalog (`catalog_own.py`)."""
        brought, skipped = catalog_own.bring(self.index, self.membership.classes, self.me, manifest_of)
        if brought:
            self.flush_soon()
        return brought, skipped

    def check_manifest(self, manifest: Manifest) -> None:
        """Entries whose shape the object's manifest belies stop counting: an owner lied."""
        if catalog_own.belied(self.index, manifest):
            self.on_changed({manifest.object_id})

    def on_doc(self, old: CloudDoc | None, new: CloudDoc) -> None:
        """A new document version: departed members' logs go; erases count by the admins now;
        redefined classes rank again (their objects are re-placed under the new definition)."""
        self._prune()
        if old is None:
            return
        if {x.peer_id for x in old.members if old.is_admin(x.peer_id)} != {
            x.peer_id for x in new.members if new.is_admin(x.peer_id)
        }:
            gone = self.index.recount_erasures(self._admins())
            if gone:
                self.on_gone(sorted(gone))
        before, after = old.class_map, new.class_map
        changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
        if changed:
            known = {n: (catalog.rank(c), c.coding.k, c.coding.n) if (c := after.get(n)) else None for n in changed}
            self.on_changed(self.index.rerank(known))

    # -- links and gossip

    def on_link(self, link: PeerLink) -> None:
        """A member connected: send our heads; our HAVE stream to it waits until it is in step."""
        if self.membership.is_member(link.peer_id):
            self._prune()
            self._agreed[link] = asyncio.Event()
            link.closed.add_done_callback(lambda _: self._forget(link))
            link.notify(m.CatalogHeads(self._packed_heads()))
            if self._in_step(link):  # its heads may have come in the same read as the handshake's end
                self._agree(link)
            self.flush_soon()  # what a crash left unsigned

    async def ready(self, link: PeerLink) -> None:
        """Return once the member holds every log as far as we do (or READY_WAIT passed): then
        this link's HAVEs may flow."""
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
                claimed = catalog.unpack_heads(msg.heads, MAX_AUTHORS)
            except FormatError as e:
                link.close(str(e))
                return
            members = self._members()
            theirs = {a: h for a, h in claimed.items() if a in members}  # others' logs are not ours to pull
            if link not in self._theirs:
                link.closed.add_done_callback(lambda _: self._forget(link))
            self._theirs[link] = theirs
            for author, (seq, prefix) in theirs.items():
                head = self.heads.get(author, NO_HEAD)
                if seq > head.seq:
                    self._pull_soon(link, author)
                elif seq == head.seq and prefix != head.digest[:16] and author not in self._forked:
                    self._forked.add(author)
                    log.warning("catalog: %s signed two different logs (batch %d differs)", author.hex()[:12], seq)
            if self._in_step(link):
                self._agree(link)

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Serve a page of an author's batches, to members only."""
        assert isinstance(msg, m.CatalogWant)
        if not self.membership.is_member(link.peer_id):
            await link.answer(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
            return
        found = await asyncio.to_thread(self.index.catalog_batches, msg.author, msg.after, batches.BATCH_BYTES)
        head = self.heads.get(msg.author, NO_HEAD).seq
        await link.answer(msg.id, m.CatalogPage(msg.id, tuple(found), msg.after + len(found) < head))

    # -- internals

    def _take_one(self, link: PeerLink, data: bytes) -> None:
        """A batch a member pushed, kept before the next message on the link is read (the owner's
        HAVEs follow it and would be dropped for an object we do not know yet); a gap in the
        author's log means we missed some: pull them."""
        try:
            author, seq = catalog.peek(data)
        except FormatError as e:
            link.close(f"catalog batch refused: {e}")
            return
        head = self.heads.get(author, NO_HEAD)
        if author == self.me or author in self._pulling or seq <= head.seq or author not in self._members():
            return  # our own log is ours to write; a pull brings it; a replay; not a member's
        if seq > head.seq + 1:
            self._pull_soon(link, author)
            return
        try:
            batch = catalog.Batch.decode(data)  # one signature and at most MAX_OPS hashes: a few ms
        except FormatError as e:
            link.close(f"catalog batch refused: {e}")
            return
        try:
            entries, erasures = self._entries(batch, head)
        except RefusedError as e:
            log.info("catalog batch from %s refused: %s", _who(link), e)
            return
        gone = self.index.append_batch(author, batch.seq, data, entries, erasures)
        self.heads[author] = Head(batch.seq, head.logged + len(entries), catalog.digest(data))
        self._gone(gone)  # (its author pushed it to every member: no heads to tell)

    def _entries(self, batch: catalog.Batch, head: Head) -> tuple[list[OwnedEntry], list[tuple[bytes, float]]]:
        """Check a decoded batch against our cloud and its author's log so far: the entries to
        keep and the erasures that count (an admin's only; another member's erase ends nothing,
        unless it becomes an admin: `on_doc`), or RefusedError."""
        doc = self.membership.doc
        if doc is None:
            raise RefusedError("not in a cloud")
        author = batch.author.public_key
        batch.check(doc.cloud_id, [x.peer_id for x in doc.members], head.seq, head.digest, head.logged, time.time())
        erasures = [(op.object_id, op.at) for op in batch.ops if op.kind == catalog.ERASE]
        entries = [catalog.owned(op, batch.owner_key, doc.class_map, author) for op in batch.ops]
        return entries, erasures if doc.is_admin(batch.author) and not batch.owner else []

    def _gone(self, gone: set[bytes]) -> None:
        if gone:
            self.on_gone(sorted(gone))

    def _pull_soon(self, link: PeerLink, author: bytes) -> None:
        busy = sum(1 for lk in self._pulling.values() if lk is link)
        if author not in self._pulling and busy < PULLS_PER_LINK:
            self._pulling[author] = link
            self._spawn(self._pull(link, author))

    async def _pull(self, link: PeerLink, author: bytes) -> None:
        """Fetch the rest of one author's log from `link`, page by page, the next page asked for
        while this one is checked and kept (one worker call and one transaction per page)."""
        learned = 0

        def ask(after: int) -> "asyncio.Future[Any]":
            return asyncio.ensure_future(link.call(m.CatalogWant(link.next_id(), author, after), PAGE_TIMEOUT))

        waiting = ask(self.heads.get(author, NO_HEAD).seq)
        try:
            while True:
                page = (await waiting).message
                assert isinstance(page, m.CatalogPage)
                more = page.more and bool(page.batches)
                if more:
                    waiting = ask(self.heads.get(author, NO_HEAD).seq + len(page.batches))
                # Pushes of this author wait for the pull (`_pulling`): nobody else moves its head.
                kept, gone = await asyncio.to_thread(self._keep_page, author, page.batches)
                learned += kept
                self._gone(gone)
                if not more:
                    break
            claimed = self._theirs.get(link, {}).get(author, (0, b""))[0]
            if self.heads.get(author, NO_HEAD).seq < claimed:
                link.close(f"claimed batch {claimed} of {author.hex()[:12]} and did not hand it over")
        except FormatError as e:
            link.close(f"catalog batch refused: {e}")
        except RefusedError as e:
            log.warning("catalog log of %s from %s refused: %s", author.hex()[:12], _who(link), e)
        except (PeerError, m.ProtocolError) as e:
            log.info("catalog sync with %s stopped: %s", _who(link), e)
        finally:
            del self._pulling[author]
            if not waiting.done():
                waiting.cancel()
        if learned:
            log.info("learned %d catalog batch(es) of %s from %s", learned, author.hex()[:12], _who(link))
            self._tell_heads()
        self._pull_again(author, link)

    def _pull_again(self, author: bytes, tried: PeerLink) -> None:
        """After a pull, another member that holds more of that log (or of any, once a link's
        pulls are done) is asked in turn: one member cannot hold a log back."""
        mine = self.heads.get(author, NO_HEAD).seq
        for link, theirs in list(self._theirs.items()):
            if link is not tried and not link.closed.done() and theirs.get(author, (0, b""))[0] > mine:
                self._pull_soon(link, author)
                return
        for other, seq in self._theirs.get(tried, {}).items():
            if seq[0] > self.heads.get(other, NO_HEAD).seq and not tried.closed.done():
                self._pull_soon(tried, other)  # waited for a free slot on this link

    def _keep_page(self, author: bytes, page: tuple[bytes, ...]) -> tuple[int, set[bytes]]:
        """In a worker thread: check a page's batches in order and keep them in one transaction
        (those before a bad one are kept, then its error is raised)."""
        checked: list[tuple[int, bytes, list[OwnedEntry], list[tuple[bytes, float]]]] = []
        head = self.heads.get(author, NO_HEAD)
        error: Exception | None = None
        try:
            for data in page:
                batch = catalog.Batch.decode(data)
                if batch.author.public_key != author:
                    raise FormatError("catalog page holds another author's batch")
                entries, erasures = self._entries(batch, head)
                checked.append((batch.seq, data, entries, erasures))
                head = Head(batch.seq, head.logged + len(entries), catalog.digest(data))
        except (FormatError, RefusedError) as e:
            error = e
        gone = self.index.append_batches(author, checked) if checked else set()
        if checked:
            self.heads[author] = head
        if error is not None:
            raise error
        return len(checked), gone

    def _tell_heads(self) -> None:
        """We learned batches by a pull: members that hold less pull from us, and members whose
        HAVE streams wait for us to know their objects see that we do."""
        heads = m.CatalogHeads(self._packed_heads())
        for other in self._member_links():
            other.notify(heads)

    def _in_step(self, link: PeerLink) -> bool:
        """Whether the member holds every log as far as we do: then it knows every object our
        HAVEs name (announced earlier, they would be dropped as unknown)."""
        theirs = self._theirs.get(link)
        if theirs is None:
            return False
        members = self._members()
        return all(theirs.get(a, (0, b""))[0] >= h.seq for a, h in self.heads.items() if a in members)

    def _prune(self) -> None:
        """Logs of authors no longer members go, and with them their entries (in a worker)."""
        members = self._members()
        for author in [a for a in self.heads if members and a not in members]:
            del self.heads[author]
            self._spawn(self._drop(author))

    async def _drop(self, author: bytes) -> None:
        gone = await asyncio.to_thread(self.index.drop_author, author, self._admins())
        log.info("dropped the catalog log of former member %s (%d objects left)", author.hex()[:12], len(gone))
        self.on_changed(gone)

    def _members(self) -> set[bytes]:
        doc = self.membership.doc
        return {x.peer_id.public_key for x in doc.members} if doc is not None else set()

    def _admins(self) -> set[bytes]:
        doc = self.membership.doc
        return {x.peer_id.public_key for x in doc.members if doc.is_admin(x.peer_id)} if doc is not None else set()

    def _packed_heads(self) -> bytes:
        return catalog.pack_heads({a: (h.seq, h.digest) for a, h in self.heads.items()})

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
