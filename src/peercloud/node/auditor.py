"""Storage audits: holders prove what they announced, one random leaf of one block at a time.

A claim (HAVE) counts only for the blocks that answered a challenge: for each, a random 64 KiB
leaf and its Merkle path up to the block ID, checked against the manifest. Nothing is counted
on the strength of a sample: a holder with 90 % of the blocks gets 90 % counted, never 100 %.
An audit of a claim challenges up to AUDIT_BATCH blocks not yet proved (8 in flight), pass after
pass while the holder answers every challenge, so an honest holder of a new 1 GiB object is
proved within seconds (its answer rate is the limit); a proved claim is re-audited
every AUDIT_INTERVAL with REAUDIT_SAMPLE of its proved blocks, and any wrong or missing answer
drops the holder's whole claim on that object to nothing (counted again only once re-proved).

How sure: each counted block answered for one random leaf, so a holder keeping a fraction q of
a block's leaves passed with probability q; a holder that later dropped a fraction d of its
proved blocks is caught by one re-audit with probability 1 - (1 - d)^8 (d = 10 %: 57 %; 30 %:
94 %), and by three hourly re-audits with 1 - (1 - d)^24 (d = 10 %: 92 %).

Answering is bounded: challenges from members are served at AUDITS_PER_SECOND (burst twice
that), from other peers at OUTSIDER_AUDITS_PER_SECOND, with separate read slots so members go
first; above the rate a challenge is answered `busy`, which the challenger treats as no verdict.
Work is picked by an indexed query (claims whose `due_at` has come, per connected peer).
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

from peercloud.cloud.ledger import bitmap_from_indexes, indexes_from_bitmap
from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.errors import IntegrityError, NotFoundError, PeercloudError
from peercloud.identity import PeerId
from peercloud.net.link import PeerError, PeerLink
from peercloud.store.index import Holding, Index
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
AUDIT_BATCH = 32  # unproved blocks challenged per audit of a claim
REAUDIT_SAMPLE = 8  # proved blocks re-checked per audit
CHALLENGES_IN_FLIGHT = 8  # per claim being audited
AUDIT_INTERVAL = 3600.0  # seconds between re-audits of a fully proved claim
FAILED_RETRY = 60.0  # a failed holder is challenged again after this, or when it announces anew
INCONCLUSIVE_RETRY = 30.0  # the holder was busy or the link failed
AUDIT_TIMEOUT = 20.0
CLAIMS_PER_PEER = 4  # claims of one peer audited at once
CLAIMS_PER_SECOND = 50.0  # claim audits started per second in all: a new member's 100,000 claims
# are proved over the next half hour instead of all at once (planning counts them as present)
SCAN_EVERY = 1.0
AUDITS_PER_SECOND = 200.0  # challenges answered per member
OUTSIDER_AUDITS_PER_SECOND = 10.0


@dataclass
class _Bucket:
    """A token bucket: `rate` per second, up to twice that saved."""

    rate: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(2 * self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Auditor:
    """Challenges peers' claims and answers their challenges."""

    def __init__(
        self,
        index: Index,
        read: Callable[[bytes], bytes],
        peers: PeerManager,
        manifest: Callable[[bytes], Awaitable[Manifest]],
        member: Callable[[PeerId | None], bool],
    ) -> None:
        self.index = index
        self.read = read  # a verified block held here (or re-created by a get in progress)
        self.peers = peers
        self.manifest = manifest
        self.member = member
        self.on_proved: Callable[[bytes], None] = lambda _: None  # an object's proofs changed
        self._running: dict[bytes, set[bytes]] = {}  # peer → objects being audited
        self._buckets: dict[PeerId, _Bucket] = {}
        self._budget = _Bucket(CLAIMS_PER_SECOND, CLAIMS_PER_SECOND, time.monotonic())
        self._reads = {True: asyncio.Semaphore(4), False: asyncio.Semaphore(1)}  # members', others'

    async def run(self) -> None:
        """Start due audits whenever claims change, and every SCAN_EVERY seconds."""
        while True:
            self.start_due()
            await self.peers.changed(SCAN_EVERY)

    def start_due(self) -> None:
        """Start audits of due claims, a few per connected peer (an indexed query per peer)."""
        now = time.time()
        loop = asyncio.get_running_loop()
        for pid, link in list(self.peers.links.items()):
            running = self._running.setdefault(pid.public_key, set())
            room = CLAIMS_PER_PEER - len(running)
            if room <= 0:
                continue
            for object_id, h in self.index.due_holdings(pid.public_key, now, room + len(running)):
                if object_id in running or len(running) >= CLAIMS_PER_PEER:
                    continue
                if not self._budget.take(time.monotonic()):
                    return
                running.add(object_id)
                task = loop.create_task(self._audit(link, object_id, h))
                task.add_done_callback(partial(_discard, running, object_id))

    async def _audit(self, link: PeerLink, object_id: bytes, h: Holding) -> None:
        """Prove one claim pass after pass, each pass one token of the budget: a repaired copy of
        1 GiB counts within seconds, not at one pass per scan. A pass the holder did not answer
        whole (busy: above its rate) ends the run; the claim stays due for the next scan."""
        now = time.time()
        try:
            manifest = await self.manifest(object_id)
        except PeercloudError:
            self.index.set_due(h.peer_id, object_id, now + INCONCLUSIVE_RETRY)  # nobody serves it yet
            return
        total = len(manifest.blocks())
        claimed = set(indexes_from_bitmap(h.bitmap, total))
        confirmed = set(indexes_from_bitmap(h.confirmed, total)) & claimed
        while True:
            asked = min(AUDIT_BATCH, len(claimed - confirmed))
            verdict, proved = await audit(link, manifest, replace(h, confirmed=bitmap_from_indexes(total, confirmed)))
            now = time.time()
            if verdict is None:
                self.index.set_due(h.peer_id, object_id, now + INCONCLUSIVE_RETRY)
                return
            if not verdict:
                self.index.set_audit(h.peer_id, object_id, b"", failed=True, due_at=now + FAILED_RETRY)
                log.warning(
                    "%s failed an audit of %s: its claim is not counted",
                    PeerId(h.peer_id).short(),
                    object_id.hex()[:12],
                )
            else:
                confirmed |= proved
                due = now if claimed - confirmed else now + AUDIT_INTERVAL * random.uniform(0.9, 1.1)
                self.index.set_audit(h.peer_id, object_id, bitmap_from_indexes(total, confirmed), False, due)
            self.peers.have_version += 1  # holder maps and the ledger see the new confirmation
            self.on_proved(object_id)
            whole = verdict and len(proved) == asked > 0
            if not (whole and claimed - confirmed and self._budget.take(time.monotonic())):
                return
            now_claimed = next((x.bitmap for _, x in self.index.holdings(object_id) if x.peer_id == h.peer_id), None)
            if now_claimed != h.bitmap:
                return  # the holder announced anew: the next scan audits what it claims now

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Answer a peer's challenge from the local store, within its rate (members first)."""
        if not isinstance(msg, m.Audit) or link.peer_id is None:
            return
        member = self.member(link.peer_id)
        now = time.monotonic()
        rate = AUDITS_PER_SECOND if member else OUTSIDER_AUDITS_PER_SECOND
        bucket = self._buckets.setdefault(link.peer_id, _Bucket(rate, 2 * rate, now))
        if not bucket.take(now):
            await link.answer(msg.id, m.Error(msg.id, "busy", "too many audits: slow down"))
            return
        async with self._reads[member]:
            try:
                data = await asyncio.to_thread(self.read, msg.block)
                proof = merkle.prove(data, msg.leaf)
            except (NotFoundError, IntegrityError):
                await link.answer(msg.id, m.Error(msg.id, "not_found", "block not held here"))
                return
            except IndexError:
                await link.answer(msg.id, m.Error(msg.id, "bad_request", "no such leaf in this block"))
                return
            del data
        await link.answer(msg.id, m.Proof(msg.id, msg.block, msg.leaf, proof.path), proof.leaf)


def _discard(running: set[bytes], object_id: bytes, _: object) -> None:
    running.discard(object_id)


async def audit(link: PeerLink, manifest: Manifest, h: Holding) -> tuple[bool | None, set[int]]:
    """Challenge one claim: (True, blocks proved), (False, _) failed, (None, _) no verdict (link trouble)."""
    blocks = manifest.blocks()
    claimed = indexes_from_bitmap(h.bitmap, len(blocks))
    proved_before = set(indexes_from_bitmap(h.confirmed, len(blocks)))
    fresh = [i for i in claimed if i not in proved_before]
    old = [i for i in claimed if i in proved_before]
    # While a claim is being proved pass after pass, every challenge goes to blocks not proved
    # yet; proved blocks are re-checked once the whole claim is (at each AUDIT_INTERVAL).
    sample = random.sample(fresh, min(AUDIT_BATCH, len(fresh))) or random.sample(old, min(REAUDIT_SAMPLE, len(old)))
    verdicts: dict[int, bool | None] = {}
    gate = asyncio.Semaphore(CHALLENGES_IN_FLIGHT)

    async def challenge(i: int) -> None:
        segment, _, block_id = blocks[i]
        size = manifest.share_size(segment)
        leaf = random.randrange(merkle.leaf_count(size))
        async with gate:
            try:
                response = await link.call(m.Audit(link.next_id(), block_id, leaf), AUDIT_TIMEOUT)
            except PeerError as e:
                verdicts[i] = False if e.code in ("not_found", "bad_request") else None
                return
        proof = response.message
        assert isinstance(proof, m.Proof)
        verdicts[i] = proof.leaf == leaf and merkle.verify_proof(
            block_id, size, merkle.LeafProof(leaf, bytes(response.payload), proof.path)
        )

    await asyncio.gather(*(challenge(i) for i in sample))
    if any(v is False for v in verdicts.values()):
        return False, set()
    proved = {i for i, v in verdicts.items() if v}
    if not proved and sample:
        return None, set()
    return True, proved
