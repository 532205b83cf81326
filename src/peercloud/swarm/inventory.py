"""Inventory exchange: what this node holds, streamed to each link in batches, paced by the socket.

One sender task per link: first the whole inventory, page by page from the index (so 100,000
objects cost dozens of `haves` messages and never a synchronous pass on the loop), then every
object whose holdings changed since, coalesced (ten announcements of one object while a batch
is on the wire become one entry). Each message waits until the socket takes more, and the task
yields between pages, so a large library neither stalls the loop nor makes the node send a
burst its peer's rate limit would punish.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from peercloud.net.link import PeerLink
from peercloud.store.index import InventoryItem
from peercloud.wire import batches
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
PAGE = 500  # objects read from the index per step


class Inventory(Protocol):
    """What this node holds: the index, with the gets in progress added (`swarm/live.py`)."""

    def local_inventory(self, after: bytes, limit: int) -> tuple[list[InventoryItem], bytes | None]:
        """A page of everything announced, in object ID order after `after`."""

    def inventory_of(self, ids: list[bytes], span: bool = False) -> list[InventoryItem]:
        """The announcement of these objects."""


class InventorySender:
    """Streams this node's HAVEs to one link."""

    def __init__(self, link: PeerLink, index: Inventory, ready: Callable[[PeerLink], Awaitable[None]]) -> None:
        self.link = link
        self.index = index
        self.ready = ready
        self.dirty: dict[bytes, None] = {}  # objects to announce again, in order
        self._wake = asyncio.Event()

    def announce(self, object_id: bytes) -> None:
        """Our holdings of an object changed: tell this peer (soon, coalesced)."""
        self.dirty[object_id] = None
        self._wake.set()

    async def run(self) -> None:
        """Send the whole inventory, then changes as they come, until the link closes."""
        await self.ready(self.link)
        after: bytes | None = b""
        while after is not None and self._open():
            items, after = await asyncio.to_thread(self.index.local_inventory, after, PAGE)
            await self._send(items)
        await self._notify(m.Haves(b""))  # an empty batch: our whole inventory is on its way
        while self._open():
            await self._wake.wait()
            self._wake.clear()
            while self.dirty and self._open():
                ids = list(self.dirty)[:PAGE]
                for oid in ids:
                    del self.dirty[oid]
                await self._send(await asyncio.to_thread(self.index.inventory_of, ids))

    def _open(self) -> bool:
        return self.link.conn.state is State.OPEN

    async def _send(self, items: list[InventoryItem]) -> None:
        large = [i for i in items if len(i.bitmap) > batches.MAX_BATCH_BITMAP]
        small = [
            batches.HaveEntry(i.object_id, i.bitmap, i.pinned, i.provisional)
            for i in items
            if len(i.bitmap) <= batches.MAX_BATCH_BITMAP
        ]
        for packed in batches.pack_haves(small):
            await self._notify(m.Haves(packed))
        for item in large:
            for offset in range(0, len(item.bitmap), m.HAVE_PIECE):
                piece = item.bitmap[offset : offset + m.HAVE_PIECE]
                await self._notify(m.Have(item.object_id, piece, offset, item.pinned, item.provisional))
        await asyncio.sleep(0)

    async def _notify(self, msg: m.Notice) -> None:
        await self.link.writable()
        if self._open():
            self.link.notify(msg)
