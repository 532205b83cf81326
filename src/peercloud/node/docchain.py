"""Keeping this node's chain of cloud document versions in step with its members'.

A version that follows ours is checked and kept at once. One that does not (we missed some, or
two admins edited at once) starts a reconciliation with the member that sent it: its earlier
versions are fetched one by one (`cloud_want`) until its chain meets ours, the branch is checked
link by link, and at the fork `cloud/history.py` says which side wins. When theirs wins, ours is
dropped from the fork on, and a change this node signed on the losing side is signed again on
top of the winner; when ours wins, they get our current version and do the same on their side.
Only members hear versions from us, and only members' versions are read.
"""

import asyncio
import logging
from collections.abc import Callable

from peercloud.cloud.document import CloudDoc, SignedDoc
from peercloud.cloud.history import check_child, rebase, wins
from peercloud.errors import IntegrityError, RefusedError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.index import Index
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
FETCH_TIMEOUT = 10.0
MAX_FETCH = 4096  # versions one reconciliation may fetch: a chain is as long as admins made it


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
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # The newest version each member sent that still needs reconciling: one task per link,
        # however many notices a member sends.
        self._pending: dict[PeerLink, SignedDoc] = {}

    def version(self, seq: int) -> SignedDoc | None:
        """A version of our chain, or None when we do not hold it."""
        raw = self.index.cloud_version(seq)
        return SignedDoc.decode(raw) if raw is not None else None

    def on_link(self, link: PeerLink) -> None:
        """A member connected: a joiner fills in the versions before the one it joined with."""
        first = self.index.first_cloud_version()
        if first > 1:
            self._spawn(self._complete(link, first))

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
        if link not in self._pending:
            self._spawn(self._reconcile(link))
        self._pending[link] = new

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

    # -- internals

    async def _fetch(self, link: PeerLink, seq: int) -> SignedDoc:
        head = self.head()
        assert head is not None
        answer = await link.call(m.CloudDocWant(link.next_id(), head.doc.cloud_id, seq), FETCH_TIMEOUT)
        assert isinstance(answer.message, m.Ok)
        return SignedDoc.decode(answer.message.doc)

    async def _complete(self, link: PeerLink, first: int) -> None:
        """Fetch the versions below `first` from a member, each checked against the one above."""
        async with self._lock:
            if self.index.first_cloud_version() != first:
                return  # another member filled it in meanwhile
            above = self.version(first)
            found: list[SignedDoc] = []
            try:
                while above is not None and above.doc.seq > 1:
                    parent = await self._fetch(link, above.doc.seq - 1)
                    check_child(parent, above)
                    found.append(parent)
                    above = parent
            except (PeerError, IntegrityError, RefusedError, m.ProtocolError) as e:
                log.info("cloud history from %s incomplete: %s", link.peer_id.short() if link.peer_id else "?", e)
            if found:
                self.index.add_cloud_versions([(v.doc.seq, v.encode()) for v in found])

    async def _reconcile(self, link: PeerLink) -> None:
        async with self._lock:
            theirs = self._pending.pop(link)
            try:
                await self._reconcile_locked(link, theirs)
            except (PeerError, IntegrityError, RefusedError, m.ProtocolError) as e:
                who = link.peer_id.short() if link.peer_id else "?"
                log.warning("cloud document version %d from %s refused: %s", theirs.doc.seq, who, e)

    async def _reconcile_locked(self, link: PeerLink, theirs: SignedDoc) -> None:
        head = self.head()
        if head is None or theirs.digest == head.digest:
            return
        # Walk their chain down until it meets ours: `base` is the last version we share.
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
            parent = await self._fetch(link, top.doc.seq - 1)
            if parent.digest != top.doc.prev:
                raise RefusedError(f"its version {parent.doc.seq} is not the parent of its version {top.doc.seq}")
            branch.append(parent)
        branch.reverse()
        parent_of = base
        for version in branch:
            check_child(parent_of, version)
            parent_of = version
        head = self.head()  # it may have moved while we fetched
        assert head is not None
        ours = self.version(base.doc.seq + 1) if head.doc.seq > base.doc.seq else None
        if ours is not None and ours.digest == branch[0].digest:
            branch = [v for v in branch if v.doc.seq > head.doc.seq]  # ours is a prefix of theirs
            if branch and branch[0].doc.prev == head.digest:
                self.adopt(branch)
            return
        if ours is not None and not wins(branch[0], ours, base):
            link.notify(m.CloudDoc(head.encode()))  # our branch wins: they will switch
            return
        dropped = [v for s in range(base.doc.seq + 1, head.doc.seq + 1) if (v := self.version(s)) is not None]
        if dropped:
            log.warning(
                "cloud document: %s's edit at version %d wins over ours; %d version(s) dropped",
                branch[0].signer.short(),
                base.doc.seq + 1,
                len(dropped),
            )
        self.adopt(branch)
        self._reapply(base, dropped)

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
