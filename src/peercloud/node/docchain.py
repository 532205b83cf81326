"""Keeping this node's chain of cloud document versions in step with its members'.

A version that follows ours is checked and kept at once. One that does not (we missed some, or
two admins edited at once) starts a reconciliation with the member that sent it. When its chain
goes on from our current version, the versions after ours are fetched one by one (`cloud_want`),
each checked against the one before it as it arrives, and kept in batches. Otherwise (a fork)
its earlier versions are fetched going down until its chain meets ours, the branch is checked
link by link, and `cloud/history.py` says which of the two branches after the last shared
version wins. When theirs wins, ours is dropped from the fork on, and a change this node signed
on the losing side is signed again on top of the winner; when ours wins, they get our current
version and do the same on their side. Only members hear versions from us, and only members'
versions are read.

Fetching goes on without the lock, one reconciliation per member at a time, each within
`RECONCILE_TIMEOUT` and `MAX_FETCH_BYTES`; the lock is taken only to re-read our chain, check
and adopt, so a member sending a long fake chain holds neither much memory nor the others up.
"""

import asyncio
import logging
from collections.abc import Callable

from peercloud.cloud.document import MAX_DOC_SIZE, CloudDoc, SignedDoc
from peercloud.cloud.history import branch_wins, check_child, rebase
from peercloud.errors import IntegrityError, RefusedError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.index import Index
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
FETCH_TIMEOUT = 10.0
RECONCILE_TIMEOUT = 60.0  # one reconciliation, its fetches included
MAX_FETCH = 4096  # versions one reconciliation may fetch going down to a fork
MAX_FETCH_BYTES = 8 * 1024 * 1024  # bytes of versions one reconciliation may fetch
MAX_VERSION_BYTES = MAX_DOC_SIZE + 256  # one signed version, at most
HISTORY_BATCH = 256  # versions a joiner stores at once while filling in its history


class _Budget:
    """Bytes one reconciliation may still fetch."""

    def __init__(self, left: int) -> None:
        self.left = left

    def spend(self, size: int) -> None:
        """Count a fetched version; RefusedError once the budget is spent."""
        self.left -= size
        if self.left < 0:
            raise RefusedError(f"its versions exceed {MAX_FETCH_BYTES} bytes in one reconciliation")


class DocChain:
    """The versions of this node's cloud document: fast-forward, catch up, resolve forks."""

    def __init__(
        self,
        identity_peer: PeerId,
        index: Index,
        head: Callable[[], SignedDoc | None],
        adopt: Callable[[list[SignedDoc]], None],
        publish: Callable[[CloudDoc], None],
    ) -> None:
        self.me = identity_peer
        self.index = index
        self.head = head  # our current version
        self.adopt = adopt  # make these versions the end of our chain (membership acts on it)
        self.publish = publish  # sign this document's change again on top of our head
        self._lock = asyncio.Lock()  # re-reading our chain, checking and adopting (never fetching)
        self._filling = asyncio.Lock()  # one joiner history fill at a time
        self._tasks: set[asyncio.Task[None]] = set()
        # The newest version each member sent that still needs reconciling, and the members with
        # a reconciliation running: one task per link, however many notices a member sends.
        self._pending: dict[PeerLink, SignedDoc] = {}
        self._running: set[PeerLink] = set()

    def version(self, seq: int) -> SignedDoc | None:
        """A version of our chain, or None when we do not hold it."""
        raw = self.index.cloud_version(seq)
        return SignedDoc.decode(raw) if raw is not None else None

    def on_link(self, link: PeerLink) -> None:
        """A member connected: a joiner fills in the versions before the one it joined with."""
        if self.index.first_cloud_version() > 1:
            self._spawn(self._complete(link))

    def on_gossip(self, link: PeerLink, new: SignedDoc) -> None:
        """A member's current version: keep it, help the member catch up, or reconcile."""
        head = self.head()
        if head is None or new.digest == head.digest:
            return
        if new.doc.cloud_id != head.doc.cloud_id:
            raise RefusedError("cloud document belongs to another cloud")
        if new.doc.seq == head.doc.seq + 1 and new.doc.prev == head.digest:
            check_child(head, new)
            self.adopt([new])
            return
        ours = self.version(new.doc.seq) if new.doc.seq <= head.doc.seq else None
        if ours is not None and ours.digest == new.digest:
            link.notify(m.CloudDoc(head.encode()))  # it is behind on our own chain: help it
            return
        self._pending[link] = new
        if link not in self._running:
            self._running.add(link)
            self._spawn(self._reconcile(link))

    async def on_request(self, link: PeerLink, msg: m.CloudDocWant) -> None:
        """Hand a member one version of our chain."""
        head = self.head()
        found = self.index.cloud_version(msg.seq) if head is not None and msg.cloud == head.doc.cloud_id else None
        if found is None:
            await link.answer(msg.id, m.Error(msg.id, "not_found", f"no version {msg.seq} here"))
        else:
            await link.answer(msg.id, m.Ok(msg.id, found))

    def stop(self) -> None:
        """Stop reconciling."""
        for task in self._tasks:
            task.cancel()
        self._pending.clear()
        self._running.clear()

    # -- internals

    async def _fetch(self, link: PeerLink, cloud_id: bytes, seq: int, budget: _Budget | None = None) -> SignedDoc:
        answer = await link.call(m.CloudDocWant(link.next_id(), cloud_id, seq), FETCH_TIMEOUT)
        assert isinstance(answer.message, m.Ok)
        if budget is not None:
            budget.spend(len(answer.message.doc))
        return SignedDoc.decode(answer.message.doc)

    async def _complete(self, link: PeerLink) -> None:
        """Fetch the versions below the first we hold from a member, each checked against the one
        above (so only versions of our own chain are kept), stored in batches as they come."""
        async with self._filling:
            first = self.index.first_cloud_version()
            if first <= 1:
                return  # another member filled it in meanwhile
            above = self.version(first)
            found: list[SignedDoc] = []
            try:
                while above is not None and above.doc.seq > 1:
                    parent = await self._fetch(link, above.doc.cloud_id, above.doc.seq - 1)
                    check_child(parent, above)
                    found.append(parent)
                    above = parent
                    if len(found) >= HISTORY_BATCH:
                        self._keep_history(found)
                        found = []
            except (PeerError, IntegrityError, RefusedError, m.ProtocolError) as e:
                log.info("cloud history from %s incomplete: %s", _name(link), e)
            self._keep_history(found)

    def _keep_history(self, found: list[SignedDoc]) -> None:
        head = self.head()
        if found and head is not None and head.doc.cloud_id == found[0].doc.cloud_id:
            self.index.add_cloud_versions([(v.doc.seq, v.encode()) for v in found])

    async def _reconcile(self, link: PeerLink) -> None:
        """Reconcile with one member, its newest notice each time, until it sent nothing newer."""
        try:
            while (theirs := self._pending.pop(link, None)) is not None:
                try:
                    async with asyncio.timeout(RECONCILE_TIMEOUT):
                        await self._reconcile_one(link, theirs)
                except (PeerError, IntegrityError, RefusedError, m.ProtocolError, TimeoutError) as e:
                    why = e if not isinstance(e, TimeoutError) else f"not done within {RECONCILE_TIMEOUT:.0f} s"
                    log.warning("cloud document version %d from %s refused: %s", theirs.doc.seq, _name(link), why)
        finally:
            self._running.discard(link)

    async def _reconcile_one(self, link: PeerLink, theirs: SignedDoc) -> None:
        head = self.head()
        if head is None or theirs.digest == head.digest:
            return
        if theirs.doc.cloud_id != head.doc.cloud_id:
            raise RefusedError("cloud document belongs to another cloud")
        budget = _Budget(MAX_FETCH_BYTES)
        if theirs.doc.seq > head.doc.seq:
            ahead = await self._forward(link, head, theirs, budget)
            if ahead is not None:
                async with self._lock:
                    self._extend(ahead)
                if ahead[-1].digest != theirs.digest:
                    self._pending.setdefault(link, theirs)  # more to fetch, with a fresh budget
                return
        branch = await self._walk(link, theirs, budget)
        async with self._lock:
            self._settle(link, branch)

    async def _forward(
        self, link: PeerLink, head: SignedDoc, theirs: SignedDoc, budget: _Budget
    ) -> list[SignedDoc] | None:
        """When their chain goes on from our `head`: its next versions, each checked against the
        one before as it arrives (up to `theirs`, the budget, or half the reconciliation's time,
        so that a slow link still makes progress). None when it forked from ours."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + RECONCILE_TIMEOUT / 2  # a fetch takes at most FETCH_TIMEOUT more
        first = await self._fetch(link, head.doc.cloud_id, head.doc.seq + 1, budget)
        if first.doc.prev != head.digest:
            return None
        check_child(head, first)
        found = [first]
        while found[-1].doc.seq < theirs.doc.seq and budget.left >= MAX_VERSION_BYTES and loop.time() < stop_at:
            try:
                nxt = await self._fetch(link, head.doc.cloud_id, found[-1].doc.seq + 1, budget)
                check_child(found[-1], nxt)
            except (PeerError, IntegrityError, RefusedError, m.ProtocolError) as e:
                log.info("cloud document versions from %s stop at %d: %s", _name(link), found[-1].doc.seq, e)
                break  # keep what was checked (its chain may have moved meanwhile)
            found.append(nxt)
        return found

    def _extend(self, ahead: list[SignedDoc]) -> None:
        """Adopt checked versions that go on from our head (it may have moved while we fetched:
        then only those after it, if they build on it)."""
        head = self.head()
        if head is None:
            return
        ahead = [v for v in ahead if v.doc.seq > head.doc.seq]
        if ahead and ahead[0].doc.prev == head.digest:
            self.adopt(ahead)

    async def _walk(self, link: PeerLink, theirs: SignedDoc, budget: _Budget) -> list[SignedDoc]:
        """Their chain from `theirs` down to where it meets ours, oldest first: not checked yet
        (that needs the version it meets), so bounded in count and bytes."""
        branch = [theirs]
        while True:
            top = branch[-1]
            if top.doc.seq == 1:
                raise RefusedError("its chain does not meet ours (another genesis)")
            base = self.version(top.doc.seq - 1)
            if base is not None and base.digest == top.doc.prev:
                break
            if len(branch) >= MAX_FETCH:
                raise RefusedError(f"its chain does not meet ours within {MAX_FETCH} versions")
            parent = await self._fetch(link, top.doc.cloud_id, top.doc.seq - 1, budget)
            if parent.digest != top.doc.prev:
                raise RefusedError(f"its version {parent.doc.seq} is not the parent of its version {top.doc.seq}")
            branch.append(parent)
        branch.reverse()
        return branch

    def _settle(self, link: PeerLink, branch: list[SignedDoc]) -> None:
        """With the lock: where their branch meets our chain now, check it, and keep the winner."""
        head = self.head()
        if head is None:
            return
        met = self._meet(branch)  # our chain may have moved while we fetched
        if met is None:
            self._pending.setdefault(link, branch[-1])  # it moved below the branch: walk again
            return
        base, branch = met
        ours = [v for s in range(base.doc.seq + 1, head.doc.seq + 1) if (v := self.version(s)) is not None]
        if ours and ours[0].digest == branch[0].digest:
            return  # it is a version of our own chain
        parent_of = base
        for version in branch:
            check_child(parent_of, version)
            parent_of = version
        if not ours:
            self.adopt(branch)  # it goes on from our head
            return
        if not branch_wins(base, branch, ours):
            link.notify(m.CloudDoc(head.encode()))  # our branch wins: they will switch
            return
        log.warning(
            "cloud document: %s's edit at version %d wins over ours; %d version(s) dropped",
            branch[0].signer.short(),
            base.doc.seq + 1,
            len(ours),
        )
        self.adopt(branch)
        self._reapply(base, ours)

    def _meet(self, branch: list[SignedDoc]) -> tuple[SignedDoc, list[SignedDoc]] | None:
        """The last version of our chain that `branch` (oldest first) builds on, and the part of
        the branch after it; None when no version of the branch builds on our chain. (If we hold
        a version of the branch we hold its parent too, hashes chaining them: so when the first
        does not build on our chain none does, and otherwise we go up while we hold them.)"""
        base = self.version(branch[0].doc.seq - 1)
        if base is None or base.digest != branch[0].doc.prev:
            return None
        i = 0
        while i + 1 < len(branch) and (held := self.version(branch[i].doc.seq)) is not None:
            if held.digest != branch[i].digest:
                break
            base, i = held, i + 1
        return base, branch[i:]

    def _reapply(self, base: SignedDoc, dropped: list[SignedDoc]) -> None:
        """Sign again, on top of the winner, each change this node had signed on the losing side."""
        before = base
        for version in dropped:
            head = self.head()
            if version.signer == self.me and head is not None and head.doc.is_admin(self.me):
                redone = rebase(before.doc, version.doc, head.doc)
                if redone is not None:
                    log.info("re-applied our cloud document change of version %d", version.doc.seq)
                    self.publish(redone)
            before = version

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _name(link: PeerLink) -> str:
    return link.peer_id.short() if link.peer_id else "?"
