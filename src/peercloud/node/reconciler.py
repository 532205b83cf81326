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
from typing import TYPE_CHECKING

from peercloud.cloud.document import CloudDoc
from peercloud.cloud.ledger import bit_count, indexes_from_bitmap
from peercloud.cloud.placement import Candidate, Plan, peer_hash, plan, rank, rank_of
from peercloud.errors import PeercloudError, RefusedError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.index import CatalogEntry, Holding
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


def column_bytes(entry: CatalogEntry) -> int:
    """Approximate bytes of one share column (a full copy for replicated objects)."""
    segments = max(1, entry.total_blocks // max(1, entry.n))
    return -(-entry.size // entry.k) + 16 * segments


def full_columns(indexes: list[int], n: int, segments: int) -> set[int]:
    """Columns (share numbers) of which every segment's block is among `indexes`."""
    counts = [0] * n
    for i in indexes:
        counts[i % n] += 1
    return {j for j in range(n) if counts[j] >= segments > 0}


class Reconciler:
    """Plans and requests placements for the objects this node coordinates."""

    def __init__(self, service: "NodeService") -> None:
        self.service = service
        self.started = time.time()
        self.pending: dict[tuple[bytes, bytes], tuple[set[int], float, float]] = {}  # → cols, since, deadline
        self.refused: dict[tuple[bytes, bytes], float] = {}
        self.unfinished: dict[bytes, tuple[float, object]] = {}  # object → (since, holders then)
        self.notes: dict[bytes, str] = {}
        self._pulls: dict[tuple[bytes, tuple[int, ...]], asyncio.Task[None]] = {}
        self._calls = asyncio.Semaphore(CONCURRENT_CALLS)

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

    def holders(
        self, entry: CatalogEntry, doc: CloudDoc, grace: float, online: set[bytes], rows: list[Holding]
    ) -> dict[bytes, set[int]]:
        """Members' proved full columns held for the cloud, online or offline within the grace.

        Copies pinned by hand are extras on top of the class, and blocks a get left behind are
        a cache: placement neither counts nor releases them (the ledger's health does count them).
        """
        segments = entry.total_blocks // entry.n
        out: dict[bytes, set[int]] = {}
        index = self.service.node.index
        local = index.local_indexes(entry.object_id, held_only=True)
        if local and not index.is_pinned(entry.object_id):
            out[self.me] = full_columns(local, entry.n, segments)
        for h in rows:
            if doc.member(PeerId(h.peer_id)) is None or h.failed_at is not None or h.pinned:
                continue  # outsiders, failed audits and copies pinned by hand are not the cloud's
            if h.peer_id not in online and self.offline_for(h.peer_id) > grace:
                continue
            claimed = set(indexes_from_bitmap(h.bitmap, entry.total_blocks))
            proved = [i for i in indexes_from_bitmap(h.confirmed, entry.total_blocks) if i in claimed]
            out[h.peer_id] = full_columns(proved, entry.n, segments)
        return {p: cols for p, cols in out.items() if cols}

    def used(self, catalog: list[CatalogEntry]) -> dict[bytes, int]:
        """Bytes each peer holds for the cloud, estimated from the ledger."""
        per_block = {e.object_id: column_bytes(e) // max(1, e.total_blocks // e.n) for e in catalog}
        out: dict[bytes, int] = {}
        for object_id, h in self.service.node.index.holdings():
            size = per_block.get(object_id)
            if size is not None:
                out[h.peer_id] = out.get(h.peer_id, 0) + bit_count(h.bitmap) * size
        out[self.me] = self.service.node.store.used
        return out

    async def round(self) -> None:
        """One pass over the catalog."""
        doc = self.service.membership.doc
        if doc is None:
            return
        now = time.time()
        self._expire(now)
        online = self.online(doc)
        others = [peer_hash(p) for p in online if p != self.me]
        mine = peer_hash(self.me)
        catalog = self.service.node.index.catalog()
        sizes = {e.object_id: column_bytes(e) for e in catalog}
        ranked = rank(self._candidates(doc, online, catalog, sizes))
        tags = {x.peer_id.public_key: x.tags for x in doc.members}
        calls = []
        for entry in catalog:
            cls = doc.class_map.get(entry.storage_class)
            position = rank_of(entry.object_id, mine, others, BACKUPS + 1)
            if cls is None or position > BACKUPS:
                continue
            rows = [h for _, h in self.service.node.index.holdings(entry.object_id)]
            holders = self.holders(entry, doc, cls.grace, online, rows)
            failed = {h.peer_id for h in rows if h.failed_at is not None}
            pending = self._pending(entry.object_id, holders, online, failed, now)
            willing = [c for c in ranked if (entry.object_id, c.peer) not in self.refused]
            decision = plan(cls, entry.n, sizes[entry.object_id], holders, online, willing, tags, pending)
            self.notes[entry.object_id] = decision.note
            if not decision.place and not decision.release:
                self.unfinished.pop(entry.object_id, None)
                continue
            # The takeover clock restarts whenever the holders change: progress is not a stall.
            state = sorted((p, sorted(c)) for p, c in holders.items())
            since, seen = self.unfinished.get(entry.object_id, (now, state))
            if seen != state:
                since = now
            self.unfinished[entry.object_id] = (since, state)
            if now - since >= position * TAKEOVER:
                calls.append(self._carry_out(entry, decision, now))
            await asyncio.sleep(0)  # a large catalog must not starve the peers' traffic
        await asyncio.gather(*calls)

    def _expire(self, now: float) -> None:
        for key, (_, _, deadline) in list(self.pending.items()):
            if now > deadline:
                log.info("placement of %s on %s not proved in time", key[0].hex()[:12], PeerId(key[1]).short())
                del self.pending[key]
                self.refused[key] = now
        for key, when in list(self.refused.items()):
            if now - when > REFUSED_PAUSE:
                del self.refused[key]

    def _candidates(
        self, doc: CloudDoc, online: set[bytes], catalog: list[CatalogEntry], sizes: dict[bytes, int]
    ) -> list[Candidate]:
        """Online members with their free offered space, less what placements in flight will take."""
        used = self.used(catalog)
        load: dict[bytes, int] = {}
        for (oid, peer), (cols, _, _) in self.pending.items():
            load[peer] = load.get(peer, 0) + len(cols)
            used[peer] = used.get(peer, 0) + sizes.get(oid, 0) * len(cols)
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
        for (oid, peer), (cols, _, _) in list(self.pending.items()):
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
        self.pending[(entry.object_id, peer)] = (set(cols), now, deadline)
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
                await self.service.release(entry.object_id, cols)
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
                await self.service.hold(object_id, cols, class_name)
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
            link.respond(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
            return
        if isinstance(msg, m.Release):
            try:
                await self.service.release(msg.object, msg.shares)
            except RefusedError as e:
                link.respond(msg.id, m.Error(msg.id, "refused", str(e)))
                return
            link.respond(msg.id, m.Ok(msg.id))
            return
        if msg.cls not in doc.class_map:
            link.respond(msg.id, m.Error(msg.id, "refused", f"unknown storage class {msg.cls!r}"))
            return
        link.respond(msg.id, m.Ok(msg.id))  # the offer is checked against the manifest before pulling
        self.start_pull(msg.object, msg.shares, msg.cls)
