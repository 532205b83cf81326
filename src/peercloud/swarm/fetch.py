"""Multi-source fetch: rarest first, several requests per peer, endgame, retries, bans.

The wanted blocks come in groups: a group is done when `need` of its candidate blocks reached
the sink. A replicated object has one group per block (need 1); an erasure-coded get has one
group per segment (need k minus the shares already here); a pin wants every block.
Where blocks go is the sink's business: the block store (a pin, a placement: committed as they
arrive, so an interrupted fetch resumes where it stopped), a get's output file (written as
segments complete), or memory. Every sink verifies a block against its ID before it keeps it;
a peer that sends a block failing verification is banned and the block is fetched elsewhere.
"""

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from peercloud.errors import IntegrityError, PeercloudError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.blockstore import BlockStore, Staged
from peercloud.swarm.peers import PeerManager

log = logging.getLogger(__name__)
PER_PEER_INFLIGHT = 32
INFLIGHT = 48  # requests of one fetch at once, all peers together: with many holders (a cloud's
# members pulling a new object from each other) 32 per peer held up to 224 MiB of blocks
REQUEST_TIMEOUT = 60.0
STALL_TIMEOUT = 20.0
COMMIT_EVERY = 32  # staged blocks per index transaction


class FetchError(PeercloudError):
    """Some wanted blocks could not be had from any reachable peer."""


class Sink(Protocol):
    """Where fetched blocks go."""

    def accept(self, block_id: bytes, data: bytes | memoryview) -> int:
        """Verify a block against its ID and keep it (runs in a worker thread, several at once);
        returns its size; IntegrityError when it does not verify."""

    def flush(self) -> None:
        """The fetch ended, however it ended: make everything accepted count (a worker thread)."""


class StoreSink:
    """Blocks into the block store: staged (verified, durable) and committed in batches, all in
    the worker threads (fsyncs and index transactions stay off the event loop)."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self._staged: list[Staged] = []
        self._lock = threading.Lock()

    def accept(self, block_id: bytes, data: bytes | memoryview) -> int:
        """Stage the block; every COMMIT_EVERY staged blocks are committed in one transaction."""
        staged = self.store.stage(data, block_id)
        batch: list[Staged] = []
        with self._lock:
            self._staged.append(staged)
            if len(self._staged) >= COMMIT_EVERY:
                batch, self._staged = self._staged, []
        if batch:
            self.store.commit(batch)
        return staged.size

    def flush(self) -> None:
        """Commit what is staged and not committed yet."""
        with self._lock:
            batch, self._staged = self._staged, []
        self.store.commit(batch)


@dataclass
class Group:
    """Candidate blocks of which `need` must end up stored here."""

    candidates: list[bytes]
    need: int


@dataclass
class _State:
    sink: Sink
    groups: list[Group]
    holders: Callable[[bytes], set[PeerId]]
    group_of: dict[bytes, int] = field(default_factory=dict)
    flying: list[int] = field(default_factory=list)  # per group: its blocks now in flight
    inflight: dict[bytes, set[PeerId]] = field(default_factory=dict)
    per_peer: dict[PeerId, int] = field(default_factory=dict)
    failed: dict[bytes, set[PeerLink]] = field(default_factory=dict)  # a reconnected peer gets another try
    via: dict["asyncio.Task[int]", PeerLink] = field(default_factory=dict)  # the link each request went on
    staging: set[asyncio.Future[int]] = field(default_factory=set)
    order: list[bytes] = field(default_factory=list)  # rarest first, rebuilt when HAVEs change
    order_version: int = -1
    salt: int = field(default_factory=lambda: random.getrandbits(64))  # this fetch's order among equals
    cursor: int = 0  # order[:cursor] is all done
    open: int = 0  # groups still needing blocks (counted, not rescanned: a get may have 500,000)

    def wanted(self, bid: bytes) -> bool:
        group = self.groups[self.group_of[bid]]
        return group.need > 0 and bid in group.candidates


async def fetch(
    peers: PeerManager,
    sink: Sink,
    groups: list[Group],
    holders: Callable[[bytes], set[PeerId]],
    progress: Callable[[int], None] | None = None,
    stall_timeout: float = STALL_TIMEOUT,
) -> int:
    """Fetch until every group is satisfied; returns bytes fetched.

    Raises FetchError when for `stall_timeout` seconds no connected peer could be asked for
    any wanted block.
    """
    st = _State(sink, _distinct(groups), holders)
    st.flying = [0] * len(st.groups)
    st.open = len(st.groups)  # _distinct keeps only groups that need something
    for gi, g in enumerate(st.groups):
        for bid in g.candidates:
            st.group_of[bid] = gi
    tasks: dict[asyncio.Task[int], tuple[bytes, PeerId]] = {}
    fetched = 0
    try:
        while st.open:
            _schedule(peers, st, tasks)
            stalled_since = time.monotonic()
            while not tasks:  # nothing to ask anyone: wait for a peer or a HAVE, for a while
                left = stall_timeout - (time.monotonic() - stalled_since)
                if left <= 0:
                    raise FetchError(
                        f"{sum(g.need for g in st.groups if g.need > 0)} blocks are not held by any reachable "
                        "peer; connect a peer that has them (`peercloud peers add`) and try again"
                    )
                await peers.changed(left)
                _schedule(peers, st, tasks)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                bid, pid = tasks.pop(task)
                who = st.inflight.get(bid, set())
                who.discard(pid)
                if not who:
                    st.flying[st.group_of[bid]] -= 1
                st.per_peer[pid] -= 1
                fetched += _complete(peers, st, tasks, task, bid, pid, progress)
    finally:
        for task in tasks:
            task.cancel()
        # Sink threads cannot be stopped: let them finish so every durable block counts.
        await asyncio.gather(*st.staging, return_exceptions=True)
        await asyncio.to_thread(st.sink.flush)  # what arrived is kept: an interrupted fetch resumes from here
    return fetched


def _distinct(groups: list[Group]) -> list[Group]:
    """Drop satisfied groups and blocks listed twice (a crafted manifest may repeat an ID)."""
    seen: set[bytes] = set()
    out = []
    for g in groups:
        candidates = [b for b in dict.fromkeys(g.candidates) if b not in seen]
        seen.update(candidates)
        need = min(g.need, len(candidates))
        if need > 0:
            out.append(Group(candidates, need))
    return out


def _reorder(peers: PeerManager, st: _State) -> None:
    """Rarest groups first; among equals, groups in an order of this fetch's own (BitTorrent's
    random first pieces): fetchers started together then hold different blocks and can serve
    each other, where in file order they would all want the same blocks from the seeder at
    once. A group's blocks stay together and in their own order (an erasure-coded segment's
    data shares before its parity), so a segment's shares arrive together and wait in memory
    only briefly."""
    rarity = [min((len(st.holders(b)) for b in g.candidates), default=0) for g in st.groups]
    groups = sorted(
        (gi for gi, g in enumerate(st.groups) if g.need > 0), key=lambda gi: (rarity[gi], hash((st.salt, gi)))
    )
    st.order = [b for gi in groups for b in st.groups[gi].candidates]
    st.order_version = peers.have_version
    st.cursor = 0


def _schedule(peers: PeerManager, st: _State, tasks: dict[asyncio.Task[int], tuple[bytes, PeerId]]) -> None:
    links = {pid: link for pid, link in peers.links.items() if not peers.is_banned(pid)}
    free = min(INFLIGHT - len(tasks), sum(max(0, PER_PEER_INFLIGHT - st.per_peer.get(pid, 0)) for pid in links))
    if free <= 0:  # every request slot of this fetch, or of every peer, is taken
        return
    if st.order_version != peers.have_version:
        _reorder(peers, st)
    while st.cursor < len(st.order) and not st.wanted(st.order[st.cursor]):
        st.cursor += 1
    waiting = False  # some wanted block is not in flight yet
    held: set[int] = set()  # groups whose earlier block waits for a busy holder
    for bid in st.order[st.cursor :]:
        if free <= 0:
            return
        gi = st.group_of[bid]
        if not st.wanted(bid) or st.inflight.get(bid) or st.flying[gi] >= st.groups[gi].need or gi in held:
            continue
        waiting = True
        if _start_from_best(links, st, tasks, bid):
            free -= 1
        elif any(pid in links and links[pid] not in st.failed.get(bid, ()) for pid in st.holders(bid)):
            # A later block of the group (a parity share: decoding from it costs CPU that a
            # data share does not) is asked only when no holder of this one is connected.
            held.add(gi)
    if not waiting:  # endgame: everything wanted is in flight; ask other holders too
        for bid in [b for b, who in st.inflight.items() if who and st.wanted(b)]:
            if free <= 0:
                return
            if _start_from_best(links, st, tasks, bid):
                free -= 1


def _start_from_best(
    links: dict[PeerId, PeerLink], st: _State, tasks: dict[asyncio.Task[int], tuple[bytes, PeerId]], bid: bytes
) -> bool:
    """Ask the least busy holder that has not failed us for this block; False if none can."""
    busy = st.inflight.get(bid, set())
    failed = st.failed.get(bid, set())
    candidates = [
        pid
        for pid in st.holders(bid)
        if pid in links and st.per_peer.get(pid, 0) < PER_PEER_INFLIGHT and pid not in busy and links[pid] not in failed
    ]
    if not candidates:
        return False
    pid = min(candidates, key=lambda p: st.per_peer.get(p, 0))
    task = asyncio.get_running_loop().create_task(_fetch_one(links[pid], st, bid))
    tasks[task] = (bid, pid)
    st.via[task] = links[pid]
    if not busy:
        st.flying[st.group_of[bid]] += 1
    st.inflight.setdefault(bid, set()).add(pid)
    st.per_peer[pid] = st.per_peer.get(pid, 0) + 1
    return True


async def _fetch_one(link: PeerLink, st: _State, bid: bytes) -> int:
    """Request one block and hand it to the sink (verify, write) in a thread.

    Sinking inside the request task lets many blocks hash and write at once while the
    scheduler keeps every peer's request slots busy. A block the sink took counts even if
    this task is cancelled meanwhile (an endgame duplicate).
    """
    data = await link.get_block(bid, REQUEST_TIMEOUT)
    future = asyncio.get_running_loop().run_in_executor(None, st.sink.accept, bid, data)
    st.staging.add(future)
    future.add_done_callback(st.staging.discard)
    return await asyncio.shield(future)


def _complete(
    peers: PeerManager,
    st: _State,
    tasks: dict[asyncio.Task[int], tuple[bytes, PeerId]],
    task: asyncio.Task[int],
    bid: bytes,
    pid: PeerId,
    progress: Callable[[int], None] | None,
) -> int:
    group = st.groups[st.group_of[bid]]
    # The link the request went on, not the peer's link now: a request lost with a duplicate
    # connection must not count against the connection that replaced it.
    link = st.via.pop(task, None)
    if task.cancelled():
        return 0
    exc = task.exception()
    if isinstance(exc, IntegrityError):
        peers.ban(pid, f"sent block {bid.hex()[:12]} that failed verification")
        return 0
    if exc is not None:
        if not isinstance(exc, PeerError):
            raise exc
        log.info("block %s from %s failed: %s", bid.hex()[:12], pid.short(), exc)
        if link is not None:
            st.failed.setdefault(bid, set()).add(link)
        return 0
    size = task.result()
    if bid not in group.candidates:
        return 0  # an endgame duplicate of a block already stored
    group.need -= 1
    if group.need == 0:
        st.open -= 1
    group.candidates.remove(bid)
    # Withdraw requests made redundant: the same block from another peer (endgame), or other
    # shares of a segment that now has enough.
    for other, (obid, _) in list(tasks.items()):
        if obid == bid or (group.need <= 0 and st.group_of.get(obid) == st.group_of[bid]):
            other.cancel()
    if progress:
        progress(size)
    return size
