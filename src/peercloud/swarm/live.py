"""Blocks this node serves while it is still fetching them: swarming without storing a block.

A get writes plaintext segments and keeps no blocks (decision 0017), yet every segment it has
written can give back each of its blocks exactly: read the plaintext back, encrypt it (the
nonce is the segment number), erasure-code it, and check the result against the block's ID
before it leaves. So fetchers of one object fetch from each other, as BitTorrent peers do, and
the seeder's upload stops being the limit. While a get runs its re-creatable blocks are added
to what this node announces; when it ends they are withdrawn (announced as none).
"""

import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Protocol

from peercloud.store.index import Index, InventoryItem

ENDED_KEPT = 256  # gets just ended whose withdrawal is still announced


class Source(Protocol):
    """A get in progress, as a source of blocks."""

    object_id: bytes

    def block(self, block_id: bytes) -> bytes | None:
        """The block re-created and verified, or None when its segment is not written yet."""

    def bitmap(self) -> bytes:
        """The blocks it can re-create now (the HAVE bitmap)."""


class LiveSources:
    """The gets in progress on this node (thread-safe: blocks are served from worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[bytes, Source] = {}
        self._ended: OrderedDict[bytes, bytes] = OrderedDict()  # object -> an all-zero bitmap

    def add(self, source: Source) -> None:
        """A get started: serve and announce what it writes."""
        with self._lock:
            self._sources[source.object_id] = source
            self._ended.pop(source.object_id, None)

    def remove(self, source: Source) -> None:
        """A get ended (done or not): stop serving; its blocks are announced as gone."""
        with self._lock:
            if self._sources.get(source.object_id) is not source:
                return
            del self._sources[source.object_id]
            self._ended[source.object_id] = bytes(len(source.bitmap()))
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)

    def block(self, block_id: bytes) -> bytes | None:
        """A block some get in progress can re-create, or None."""
        with self._lock:
            sources = list(self._sources.values())
        for source in sources:
            data = source.block(block_id)
            if data is not None:
                return data
        return None

    def bitmap(self, object_id: bytes) -> bytes | None:
        """What a get in progress (or just ended: nothing) adds to our announcement of an object."""
        with self._lock:
            source = self._sources.get(object_id)
            ended = self._ended.get(object_id)
        return source.bitmap() if source is not None else ended


class LiveInventory:
    """The index's inventory with the blocks of gets in progress added: what a node announces."""

    def __init__(self, index: Index, live: LiveSources) -> None:
        self.index, self.live = index, live

    def local_inventory(self, after: bytes, limit: int) -> tuple[list[InventoryItem], bytes | None]:
        """A page of the index's inventory (gets in progress are announced as they change)."""
        items, cursor = self.index.local_inventory(after, limit)
        return [self._with_live(i) for i in items], cursor

    def inventory_of(self, ids: list[bytes], span: bool = False) -> list[InventoryItem]:
        """The index's announcement of these objects, plus what gets in progress can serve."""
        items = {i.object_id: self._with_live(i) for i in self.index.inventory_of(ids, span)}
        for object_id in ids:
            if object_id not in items and (live := self._live(object_id)) is not None:
                items[object_id] = InventoryItem(object_id, live, False, False)
        return list(items.values())

    def _live(self, object_id: bytes) -> bytes | None:
        """What a get in progress adds, for objects outside the cloud's catalog only: members
        count each other's claims on the cloud's objects as copies (placement, keepers), and a
        get's blocks are gone when it ends; the cloud's objects have their holders to serve."""
        live = self.live.bitmap(object_id)
        return None if live is None or self.index.catalog(object_id) else live

    def _with_live(self, item: InventoryItem) -> InventoryItem:
        live = self._live(item.object_id)
        if live is None or len(live) != len(item.bitmap):
            return item
        return replace(item, bitmap=bytes(a | b for a, b in zip(item.bitmap, live, strict=True)))
