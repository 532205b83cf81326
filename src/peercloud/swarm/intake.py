"""HAVE intake: each link's HAVE messages recorded in order, one transaction each, on a worker
thread of their own; a link whose messages pile up is not read until they are recorded (TCP
backpressure: the sender waits while we catch up)."""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from peercloud.identity import PeerId
from peercloud.net.link import PeerLink
from peercloud.store.index import Claim, Index
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
INTAKE_DEPTH = 8  # HAVE messages queued per link before we stop reading it

Batch = list[Claim] | None  # None: the end of the peer's initial inventory
Recorded = Callable[[PeerLink, PeerId, Batch, int], None]  # (link, peer, batch, rows kept)


class HaveIntake:
    """Queues per link, one recording thread, and the links held while they catch up."""

    def __init__(self, index: Index, member: Callable[[PeerId], bool], recorded: Recorded) -> None:
        self.index = index
        self.member = member  # members' claims are not capped like outsiders'
        self.recorded = recorded
        self._queues: dict[PeerLink, list[Batch]] = {}
        self._held: dict[PeerLink, float] = {}  # links not read while their HAVEs are recorded, since
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="have-intake")
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, link: PeerLink, peer: PeerId, batch: Batch) -> None:
        """Queue one message's claims for recording."""
        queue = self._queues.setdefault(link, [])
        queue.append(batch)
        if len(queue) >= INTAKE_DEPTH and link not in self._held:
            self._held[link] = time.monotonic()
            link.hold_reading(True)
        if len(queue) == 1:
            task = asyncio.get_running_loop().create_task(self._digest(link, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Stop recording (a batch already in the worker thread still finishes its transaction)."""
        for task in self._tasks:
            task.cancel()
        self._recorder.shutdown(wait=False)

    async def _digest(self, link: PeerLink, peer: PeerId) -> None:
        """Record a link's HAVEs in order, each message one transaction in the worker thread."""
        queue = self._queues[link]
        try:
            while queue:
                batch = queue[0]
                # Only objects this node knows are kept (outsiders' rows capped): made-up ones cost nothing.
                kept = 0
                if batch is not None:
                    # Our own thread: staging and fsyncs queued in the default executor never delay it.
                    kept = await asyncio.get_running_loop().run_in_executor(
                        self._recorder, self.index.set_holdings, peer.public_key, batch, self.member(peer)
                    )
                queue.pop(0)
                if len(queue) < INTAKE_DEPTH // 2 and link in self._held:
                    held = time.monotonic() - self._held.pop(link)
                    if held > 1.0:
                        log.info("read nothing from %s for %.1f s while recording its HAVEs", peer.short(), held)
                    link.hold_reading(False)
                self.recorded(link, peer, batch, kept)
        except Exception:
            log.exception("recording HAVEs from %s failed", peer.short())
            raise
        finally:
            if not queue or link.conn.state is not State.OPEN:
                self._queues.pop(link, None)
                self._held.pop(link, None)
