"""The upload service: answer peers' block requests from the local store (or a get in progress)."""

import asyncio
import weakref
from collections.abc import Callable

from peercloud.errors import IntegrityError, NotFoundError
from peercloud.identity import PeerId
from peercloud.net.link import PeerLink, RequestHandler
from peercloud.wire import messages as m

READS_PER_LINK = 8  # blocks read and queued per peer at once: bounds memory whatever peers ask


def block_server(
    read: Callable[[bytes], bytes], served: Callable[[PeerId, bytes], None] = lambda _, __: None
) -> RequestHandler:
    """A request handler serving verified blocks (`read` raises NotFoundError or IntegrityError
    for a block it cannot give: reported missing).
    `served` hears of each block read for a peer, in the reading thread (a deleter tells who
    fetched an object's manifest)."""
    gates: weakref.WeakKeyDictionary[PeerLink, asyncio.Semaphore] = weakref.WeakKeyDictionary()

    async def on_request(link: PeerLink, msg: m.Message) -> None:
        if not isinstance(msg, m.GetBlock):
            return
        peer = link.peer_id
        if peer is None:
            return

        def read_for_peer() -> bytes:
            data = read(msg.block)
            served(peer, msg.block)
            return data

        gate = gates.setdefault(link, asyncio.Semaphore(READS_PER_LINK))
        async with gate:
            try:
                data = await asyncio.to_thread(read_for_peer)
            except (NotFoundError, IntegrityError):
                await link.answer(msg.id, m.Error(msg.id, "not_found", "block not held here"))
                return
            await link.answer(msg.id, m.BlockData(msg.id, msg.block), data)

    return on_request
