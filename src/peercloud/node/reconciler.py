"""The reconciler: makes every object of the cloud match its class, and serves placement requests.

Each round, for every object this node coordinates (the closest online member to the object
ID, see `placement.coordinator`), it reads the ledger, plans (`placement.plan`) and asks
members to pull or release share columns. Holders offline for less than the class's grace
period still count, so a reboot does not trigger a repair; after it, their blocks are
re-created elsewhere, and extras are released when they come back above the class max.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from peercloud.cloud.document import CloudDoc
from peercloud.cloud.ledger import indexes_from_bitmap
from peercloud.cloud.placement import Candidate, coordinator, plan, rank
from peercloud.errors import PeercloudError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.index import CatalogEntry
from peercloud.wire import messages as m

if TYPE_CHECKING:
    from peercloud.node.service import NodeService

log = logging.getLogger(__name__)
RECONCILE_EVERY = 1.0
PENDING_TIMEOUT = 900.0  # a placement not done by then is asked again (or elsewhere)
REFUSED_PAUSE = 300.0  # a member that refused a placement is not asked again for this long
CALL_TIMEOUT = 15.0


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
        self.pending: dict[tuple[bytes, bytes], tuple[set[int], float]] = {}
        self.refused: dict[tuple[bytes, bytes], float] = {}
        self.notes: dict[bytes, str] = {}
        self._pulls: dict[tuple[bytes, tuple[int, ...]], asyncio.Task[None]] = {}

    @property
    def me(self) -> bytes:
        """This node's key."""
        return self.service.node.identity.peer_id.public_key

    async def run(self) -> None:
        """Reconcile forever."""
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("reconcile round failed")
            await asyncio.sleep(RECONCILE_EVERY)

    def online(self, doc: CloudDoc) -> set[bytes]:
        """Members connected now, and this node."""
        links = self.service.peers.links
        return {x.peer_id.public_key for x in doc.members if x.peer_id in links} | {self.me}

    def offline_for(self, peer: bytes) -> float:
        """Seconds since a member was last connected (since this daemon started, at most)."""
        since = self.service.peers.last_seen.get(PeerId(peer), self.started)
        return time.time() - max(since, self.started)

    def holders(self, entry: CatalogEntry, doc: CloudDoc, grace: float, online: set[bytes]) -> dict[bytes, set[int]]:
        """Members' proved full columns held for the cloud, online or offline within the grace.

        Copies pinned by hand are extras on top of the class: placement neither counts nor
        releases them (the ledger's health does count them).
        """
        segments = entry.total_blocks // entry.n
        out: dict[bytes, set[int]] = {}
        index = self.service.node.index
        local = index.local_indexes(entry.object_id)
        if local and not index.is_pinned(entry.object_id):
            out[self.me] = full_columns(local, entry.n, segments)
        for _, h in index.holdings(entry.object_id):
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
        shape = {e.object_id: e for e in catalog}
        out: dict[bytes, int] = {}
        for object_id, h in self.service.node.index.holdings():
            entry = shape.get(object_id)
            if entry is not None:
                blocks = bin(int.from_bytes(h.bitmap, "big")).count("1")
                out[h.peer_id] = out.get(h.peer_id, 0) + blocks * column_bytes(entry) // max(
                    1, entry.total_blocks // entry.n
                )
        out[self.me] = self.service.node.store.used
        return out

    async def round(self) -> None:
        """One pass over the catalog."""
        doc = self.service.membership.doc
        if doc is None:
            return
        now = time.time()
        online = self.online(doc)
        catalog = self.service.node.index.catalog()
        sizes = {e.object_id: column_bytes(e) for e in catalog}
        ranked = rank(self._candidates(doc, online, catalog, sizes))
        tags = {x.peer_id.public_key: x.tags for x in doc.members}
        for entry in catalog:
            cls = doc.class_map.get(entry.storage_class)
            if cls is None or coordinator(entry.object_id, online) != self.me:
                continue
            holders = self.holders(entry, doc, cls.grace, online)
            pending = self._pending(entry.object_id, holders, online, now)
            willing = [c for c in ranked if now - self.refused.get((entry.object_id, c.peer), 0.0) > REFUSED_PAUSE]
            decision = plan(cls, entry.n, sizes[entry.object_id], holders, online, willing, tags, pending)
            self.notes[entry.object_id] = decision.note
            for peer, placed in decision.place.items():
                await self._place(entry, peer, placed, now)
            for peer, released in decision.release.items():
                await self._release(entry, peer, released)

    def _candidates(
        self, doc: CloudDoc, online: set[bytes], catalog: list[CatalogEntry], sizes: dict[bytes, int]
    ) -> list[Candidate]:
        """Online members with their free offered space, less what placements in flight will take."""
        used = self.used(catalog)
        load: dict[bytes, int] = {}
        for (oid, peer), (cols, _) in self.pending.items():
            load[peer] = load.get(peer, 0) + len(cols)
            used[peer] = used.get(peer, 0) + sizes.get(oid, 0) * len(cols)
        out = []
        for x in doc.members:
            p = x.peer_id.public_key
            if p in online:
                out.append(Candidate(p, x.offer - used.get(p, 0), x.tags, load.get(p, 0)))
        return out

    def _pending(
        self, object_id: bytes, holders: dict[bytes, set[int]], online: set[bytes], now: float
    ) -> dict[bytes, set[int]]:
        out = {}
        failed = {h.peer_id for _, h in self.service.node.index.holdings(object_id) if h.failed_at is not None}
        for (oid, peer), (cols, since) in list(self.pending.items()):
            if oid != object_id:
                continue
            if peer in failed:
                self.refused[(oid, peer)] = now  # it said yes, then could not prove it: ask others
            if (
                cols <= holders.get(peer, set())
                or peer not in online
                or peer in failed
                or now - since > PENDING_TIMEOUT
            ):
                del self.pending[(oid, peer)]
            else:
                out[peer] = cols
        return out

    async def _place(self, entry: CatalogEntry, peer: bytes, cols: tuple[int, ...], now: float) -> None:
        log.info("placing %s shares %s on %s", entry.object_id.hex()[:12], list(cols), PeerId(peer).short())
        self.pending[(entry.object_id, peer)] = (set(cols), now)
        if peer == self.me:
            self.start_pull(entry.object_id, cols, entry.storage_class)
            return
        try:
            link = self.service.peers.links[PeerId(peer)]
            await link.call(m.Place(link.next_id(), entry.object_id, cols, entry.storage_class), CALL_TIMEOUT)
        except (KeyError, PeerError) as e:
            log.info("placement on %s failed: %s", PeerId(peer).short(), e)
            self.pending.pop((entry.object_id, peer), None)
            self.refused[(entry.object_id, peer)] = now

    async def _release(self, entry: CatalogEntry, peer: bytes, cols: tuple[int, ...]) -> None:
        log.info("releasing %s shares %s on %s", entry.object_id.hex()[:12], list(cols), PeerId(peer).short())
        if peer == self.me:
            if not self.service.node.index.is_pinned(entry.object_id):
                await self.service.release(entry.object_id, cols)
            return
        try:
            link = self.service.peers.links[PeerId(peer)]
            await link.call(m.Release(link.next_id(), entry.object_id, cols), CALL_TIMEOUT)
        except (KeyError, PeerError) as e:
            log.info("release on %s failed: %s", PeerId(peer).short(), e)

    # -- the holder's side

    def start_pull(self, object_id: bytes, cols: tuple[int, ...], class_name: str) -> None:
        """Fetch and keep share columns in the background (once per request)."""
        key = (object_id, cols)
        if key in self._pulls and not self._pulls[key].done():
            return

        async def pull() -> None:
            try:
                await self.service.hold(object_id, cols, class_name)
            except PeercloudError as e:
                log.warning("could not pull %s shares %s: %s", object_id.hex()[:12], list(cols), e)

        self._pulls[key] = asyncio.get_running_loop().create_task(pull())

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Place and Release requests: only members of our cloud may ask."""
        assert isinstance(msg, m.Place | m.Release)
        membership = self.service.membership
        doc = membership.doc
        if doc is None or not membership.is_member(link.peer_id):
            link.respond(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
            return
        if isinstance(msg, m.Release):
            if self.service.node.index.is_pinned(msg.object):
                link.respond(msg.id, m.Error(msg.id, "refused", "pinned by hand on this node"))
                return
            await self.service.release(msg.object, msg.shares)
            link.respond(msg.id, m.Ok(msg.id))
            return
        if msg.cls not in doc.class_map:
            link.respond(msg.id, m.Error(msg.id, "refused", f"unknown storage class {msg.cls!r}"))
            return
        me = doc.member(self.service.node.identity.peer_id)
        entries = self.service.node.index.catalog(msg.object)
        need = column_bytes(entries[0]) * len(msg.shares) if entries else 0
        if me is not None and self.service.node.store.used + need > me.offer:
            link.respond(msg.id, m.Error(msg.id, "refused", "this member's offered space is full"))
            return
        link.respond(msg.id, m.Ok(msg.id))
        self.start_pull(msg.object, msg.shares, msg.cls)
