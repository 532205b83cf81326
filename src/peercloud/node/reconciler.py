"""The reconciler: makes every object of the cloud match its class, and serves placement requests.

Each round, for every object of the catalog, a member works out its rank among the online
members (0 = the coordinator, closest to the object ID, see `placement.rank_of`). The
coordinator reads the ledger, plans (`placement.plan`) and asks members to pull or release
share columns. The next two ranks compute the same plan but act only when it has stayed
unfinished for TAKEOVER seconds per rank, so a coordinator that is down, slow or lying delays
repair instead of stopping it. Holders offline for less than the class's grace period still
count, so a reboot does not trigger a repair; after it, their blocks are re-created elsewhere,
and extras are released when they come back above the class max.
"""

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peercloud.cloud.document import CloudDoc
from peercloud.cloud.holders import View, holder_view
from peercloud.cloud.keepers import Tags, releasable
from peercloud.cloud.ledger import bit_count
from peercloud.cloud.placement import Candidate, Plan, peer_hash, plan, rank, rank_of
from peercloud.errors import PeercloudError, RefusedError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.index import CatalogEntry, Holding, InventoryItem
from peercloud.wire import messages as m

if TYPE_CHECKING:
    from peercloud.node.service import NodeService

log = logging.getLogger(__name__)
RECONCILE_EVERY = 1.0
TAKEOVER = 30.0  # seconds per rank before a backup coordinator acts on an unfinished plan
BACKUPS = 2  # ranks after the coordinator that watch an object
PENDING_BASE = 120.0  # a placement not proved after this (plus size at 10 MB/s) goes elsewhere
REFUSED_PAUSE = 300.0  # a member that refused or failed a placement is not asked again for this long
CALL_TIMEOUT = 15.0
CONCURRENT_CALLS = 16
INVENTORY_WAIT = 20.0  # after a start or a join, plans wait this long at most for members' inventories
FULL_SWEEP = 30.0  # seconds between rounds over the whole catalog (between them: changed objects only)
PAGE = 1000  # catalog entries planned per step of a round


@dataclass
class _Round:
    doc: CloudDoc
    online: set[bytes]
    mine: int
    others: list[int]
    tags: dict[bytes, Tags]
    now: float
    ranked: list[Candidate] = field(default_factory=list)


def column_bytes(entry: CatalogEntry) -> int:
    """Approximate bytes of one share column (a full copy for replicated objects)."""
    segments = max(1, entry.total_blocks // max(1, entry.n))
    return -(-entry.size // entry.k) + 16 * segments


class Reconciler:
    """Plans and requests placements for the objects this node coordinates."""

    def __init__(self, service: "NodeService") -> None:
        self.service = service
        self.started = time.time()
        # (object, peer) → columns asked, since, deadline, bytes per column
        self.pending: dict[tuple[bytes, bytes], tuple[set[int], float, float, int]] = {}
        self.refused: dict[tuple[bytes, bytes], float] = {}
        self.unfinished: dict[bytes, tuple[float, object]] = {}  # object → (since, holders then)
        self.notes: dict[bytes, str] = {}
        self._pulls: dict[tuple[bytes, tuple[int, ...]], asyncio.Task[None]] = {}
        self._calls = asyncio.Semaphore(CONCURRENT_CALLS)
        self.dirty: set[bytes] = set()  # objects to plan in the next round (holdings changed)
        self.settled: set[bytes] = set()  # objects whose last plan was empty, in the state `_swept`
        self._swept: object = None  # who was online, the document version, graces run out: at the last sweep
        self._swept_at = 0.0
        self._used: dict[bytes, int] = {}
        self._used_at: float | None = None  # when `_used` was counted (a full sweep recounts it)
        self._member_keys: tuple[int, frozenset[bytes]] = (-1, frozenset())
        self._catching_up_since: float | None = None  # when this node started or joined (monotonic)

    @property
    def me(self) -> bytes:
        """This node's key."""
        return self.service.node.identity.peer_id.public_key

    async def run(self) -> None:
        """Reconcile forever; a long round is followed by a longer pause."""
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except Exception:
                log.exception("reconcile round failed")
            await asyncio.sleep(max(RECONCILE_EVERY, 2 * (time.monotonic() - started)))

    def online(self, doc: CloudDoc) -> set[bytes]:
        """Members connected now, and this node."""
        links = self.service.peers.links
        return {x.peer_id.public_key for x in doc.members if x.peer_id in links} | {self.me}

    def offline_for(self, peer: bytes) -> float:
        """Seconds since a member was last connected (since this daemon started, at most)."""
        since = self.service.peers.last_seen.get(PeerId(peer), self.started)
        return time.time() - max(since, self.started)

    def view(
        self,
        entry: CatalogEntry,
        doc: CloudDoc,
        grace: float,
        online: set[bytes],
        rows: list[Holding],
        local: InventoryItem | None,
    ) -> View:
        """Members' proved full columns of an object, as this node sees them (`cloud/holders.py`)."""
        return holder_view(self.me, self._members(doc), online, self.offline_for, grace, entry, rows, local)

    def _hearing(self, online: set[bytes]) -> bool:
        """True while this node is catching up (just started or joined) and an online member's
        initial inventory is still coming. Only for INVENTORY_WAIT after the start or the join, so
        a member that never finishes its inventory (or keeps reconnecting) cannot hold plans back."""
        clock = time.monotonic()
        if self._catching_up_since is None:
            self._catching_up_since = clock
        if clock - self._catching_up_since > INVENTORY_WAIT:
            return False
        peers = self.service.peers
        return any(PeerId(p) not in peers.inventoried for p in online if p != self.me)

    def _members(self, doc: CloudDoc) -> frozenset[bytes]:
        """The members' keys, computed once per document version."""
        if self._member_keys[0] != doc.seq:
            self._member_keys = (doc.seq, frozenset(x.peer_id.public_key for x in doc.members))
        return self._member_keys[1]

    def releasable(self, object_id: bytes, asked: set[int]) -> set[int]:
        """The asked columns this node may drop: those it is no keeper of (`cloud/keepers.py`)."""
        index = self.service.node.index
        doc = self.service.membership.doc
        entries = index.catalog(object_id)
        cls = doc.class_map.get(entries[0].storage_class) if doc and entries else None
        if doc is None or cls is None:
            return set(asked)  # nothing is held for a class here
        entry = entries[0]
        rows = [h for _, h in index.holdings(object_id)]
        local = next(iter(index.inventory_of([object_id])), None)
        view = self.view(entry, doc, cls.grace, self.online(doc), rows, local)
        tags = {x.peer_id.public_key: x.tags for x in doc.members}
        maximum = cls.maximum if entry.n == 1 else 1
        mine = view.provisional.get(self.me, set())
        return releasable(self.me, object_id, entry.n, maximum, view.kept, mine, asked, tags, cls.spread)

    def used(self, fresh: bool = False) -> dict[bytes, int]:
        """Bytes each peer holds for the cloud, estimated from the ledger (recounted each full sweep)."""
        if not fresh and self._used_at is not None:
            return {**self._used, self.me: self.service.node.store.used}
        index = self.service.node.index
        per_block: dict[bytes, int] = {}
        after = b""
        while page := index.catalog_after(after, 5000):
            per_block.update((e.object_id, column_bytes(e) // max(1, e.total_blocks // e.n)) for e in page)
            after = page[-1].object_id
        out: dict[bytes, int] = {}
        for peer, object_id, bitmap in index.claimed():
            size = per_block.get(object_id)
            if size is not None:
                out[peer] = out.get(peer, 0) + bit_count(bitmap) * size
        self._used, self._used_at = out, time.monotonic()
        return {**out, self.me: self.service.node.store.used}

    async def round(self) -> None:
        """One pass: the objects that changed; every FULL_SWEEP, all but those settled since.

        An object whose plan was empty stays *settled* (skipped by sweeps) until its holdings
        change, or the cloud's state does: who is online, the document, or which absent
        members' grace ran out. So a sweep over a quiet 100,000-object catalog reads no claims.
        """
        doc = self.service.membership.doc
        if doc is None:
            self._catching_up_since = None  # the clock starts again when this node joins
            return
        now = time.time()
        self._expire(now)
        online = self.online(doc)
        if self._hearing(online):
            return  # a member's inventory is still arriving: its copies would look missing
        index = self.service.node.index
        graces = {c.grace for c in doc.classes}
        away = frozenset((p, g) for p in self._members(doc) - online for g in graces if self.offline_for(p) > g)
        state = (frozenset(online), doc.seq, away)
        if state != self._swept:
            self.settled.clear()
        full = state != self._swept or time.monotonic() - self._swept_at > FULL_SWEEP
        todo = {*self.dirty, *self.unfinished, *(oid for oid, _ in self.pending)}
        self.settled -= todo
        self.dirty.clear()
        if full:
            self._swept, self._swept_at = state, time.monotonic()
            await asyncio.to_thread(self.used, True)
        ctx = _Round(
            doc,
            online,
            peer_hash(self.me),
            [peer_hash(p) for p in online if p != self.me],
            {x.peer_id.public_key: x.tags for x in doc.members},
            now,
        )
        ctx.ranked = rank(self._candidates(doc, online))
        calls: list[Coroutine[Any, Any, None]] = []
        if full:
            after = b""
            while ids := await asyncio.to_thread(index.catalog_ids_after, after, PAGE):
                after = ids[-1]
                unsettled = [oid for oid in ids if oid not in self.settled]
                if unsettled:
                    page = await asyncio.to_thread(index.catalog_of, unsettled)
                    calls += await self._page(ctx, page, span=True)
        else:
            ids = list(todo)
            for start in range(0, len(ids), PAGE):
                calls += await self._page(ctx, index.catalog_of(ids[start : start + PAGE]))
        await asyncio.gather(*calls)

    async def _page(
        self, ctx: "_Round", page: list[CatalogEntry], span: bool = False
    ) -> list[Coroutine[Any, Any, None]]:
        """Plan the objects of one page this node coordinates or backs up; their calls to make.

        `span`: the page is a run of the catalog in ID order, read with range scans.
        """
        index = self.service.node.index
        mine = []
        for entry in page:
            cls = ctx.doc.class_map.get(entry.storage_class)
            position = rank_of(entry.object_id, ctx.mine, ctx.others, BACKUPS + 1)
            if cls is not None and position <= BACKUPS:
                mine.append((entry, cls, position))
            else:
                self.settled.add(entry.object_id)  # another member's to coordinate while this state lasts
        ids = [e.object_id for e, _, _ in mine]
        rows = await asyncio.to_thread(index.holdings_of, ids, span)
        local = {i.object_id: i for i in await asyncio.to_thread(index.inventory_of, ids, span)}
        calls = []
        for entry, cls, position in mine:
            oid = entry.object_id
            view = self.view(entry, ctx.doc, cls.grace, ctx.online, rows[oid], local.get(oid))
            failed = {h.peer_id for h in rows[oid] if h.failed_at is not None}
            pending = self._pending(oid, view.present, ctx.online, failed, ctx.now)
            willing = [c for c in ctx.ranked if (oid, c.peer) not in self.refused]
            size = column_bytes(entry)
            decision = plan(
                oid,
                cls,
                entry.n,
                size,
                view.present,
                ctx.online,
                willing,
                ctx.tags,
                pending,
                view.provisional,
                view.kept,
            )
            if decision.note:
                self.notes[oid] = decision.note
            else:
                self.notes.pop(oid, None)
            if not decision.place and not decision.release:
                self.unfinished.pop(oid, None)
                self.settled.add(oid)
                continue
            self.settled.discard(oid)
            # The takeover clock restarts whenever the holders change: progress is not a stall.
            state = sorted((p, sorted(c)) for p, c in view.present.items())
            since, seen = self.unfinished.get(oid, (ctx.now, state))
            if seen != state:
                since = ctx.now
            self.unfinished[oid] = (since, state)
            if ctx.now - since >= position * TAKEOVER:
                calls.append(self._carry_out(entry, decision, ctx.now))
        await asyncio.sleep(0)  # a large catalog must not starve the peers' traffic
        return calls

    def _expire(self, now: float) -> None:
        for key, (_, _, deadline, _) in list(self.pending.items()):
            if now > deadline:
                log.info("placement of %s on %s not proved in time", key[0].hex()[:12], PeerId(key[1]).short())
                del self.pending[key]
                self.refused[key] = now
        for key, when in list(self.refused.items()):
            if now - when > REFUSED_PAUSE:
                del self.refused[key]

    def _candidates(self, doc: CloudDoc, online: set[bytes]) -> list[Candidate]:
        """Online members with their free offered space, less what placements in flight will take."""
        used = self.used()
        load: dict[bytes, int] = {}
        for (_, peer), (cols, _, _, size) in self.pending.items():
            load[peer] = load.get(peer, 0) + len(cols)
            used[peer] = used.get(peer, 0) + size * len(cols)
        out = []
        for x in doc.members:
            p = x.peer_id.public_key
            if p in online:
                out.append(Candidate(p, x.offer - used.get(p, 0), x.tags, load.get(p, 0)))
        return out

    def _pending(
        self, object_id: bytes, holders: dict[bytes, set[int]], online: set[bytes], failed: set[bytes], now: float
    ) -> dict[bytes, set[int]]:
        out = {}
        for (oid, peer), (cols, _, _, _) in list(self.pending.items()):
            if oid != object_id:
                continue
            if peer in failed:
                self.refused[(oid, peer)] = now  # it said yes, then could not prove it: ask others
            if cols <= holders.get(peer, set()) or peer not in online or peer in failed:
                del self.pending[(oid, peer)]
            else:
                out[peer] = cols
        return out

    async def _carry_out(self, entry: CatalogEntry, decision: Plan, now: float) -> None:
        await asyncio.gather(
            *(self._place(entry, peer, cols, now) for peer, cols in decision.place.items()),
            *(self._release(entry, peer, cols) for peer, cols in decision.release.items()),
        )

    async def _place(self, entry: CatalogEntry, peer: bytes, cols: tuple[int, ...], now: float) -> None:
        log.info("placing %s shares %s on %s", entry.object_id.hex()[:12], list(cols), PeerId(peer).short())
        deadline = now + PENDING_BASE + column_bytes(entry) * len(cols) / 10e6
        self.pending[(entry.object_id, peer)] = (set(cols), now, deadline, column_bytes(entry))
        if peer == self.me:
            self.start_pull(entry.object_id, cols, entry.storage_class)
            return
        try:
            async with self._calls:
                link = self.service.peers.links[PeerId(peer)]
                await link.call(m.Place(link.next_id(), entry.object_id, cols, entry.storage_class), CALL_TIMEOUT)
        except (KeyError, PeerError) as e:
            log.info("placement on %s failed: %s", PeerId(peer).short(), e)
            self.pending.pop((entry.object_id, peer), None)
            self.refused[(entry.object_id, peer)] = now

    async def _release(self, entry: CatalogEntry, peer: bytes, cols: tuple[int, ...]) -> None:
        log.info("releasing %s shares %s on %s", entry.object_id.hex()[:12], list(cols), PeerId(peer).short())
        try:
            if peer == self.me:
                await self.service.holding.release(entry.object_id, cols)
                return
            async with self._calls:
                link = self.service.peers.links[PeerId(peer)]
                await link.call(m.Release(link.next_id(), entry.object_id, cols), CALL_TIMEOUT)
        except (KeyError, PeerError, RefusedError) as e:
            log.info("release on %s not done: %s", PeerId(peer).short(), e)

    # -- the holder's side

    def start_pull(self, object_id: bytes, cols: tuple[int, ...], class_name: str) -> None:
        """Fetch and keep share columns in the background (once per request)."""
        key = (object_id, cols)
        if key in self._pulls:
            return

        async def pull() -> None:
            try:
                await self.service.holding.hold(object_id, cols, class_name)
            except PeercloudError as e:
                log.warning("could not pull %s shares %s: %s", object_id.hex()[:12], list(cols), e)

        task = asyncio.get_running_loop().create_task(pull())
        self._pulls[key] = task
        task.add_done_callback(lambda _: self._pulls.pop(key, None))

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Place and Release requests: only members of our cloud may ask."""
        assert isinstance(msg, m.Place | m.Release)
        membership = self.service.membership
        doc = membership.doc
        if doc is None or not membership.is_member(link.peer_id):
            await link.answer(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
            return
        if isinstance(msg, m.Release):
            try:
                await self.service.holding.release(msg.object, msg.shares)
            except RefusedError as e:
                await link.answer(msg.id, m.Error(msg.id, "refused", str(e)))
                return
            await link.answer(msg.id, m.Ok(msg.id))
            return
        if msg.cls not in doc.class_map:
            await link.answer(msg.id, m.Error(msg.id, "refused", f"unknown storage class {msg.cls!r}"))
            return
        await link.answer(msg.id, m.Ok(msg.id))  # the offer is checked against the manifest before pulling
        self.start_pull(msg.object, msg.shares, msg.cls)
