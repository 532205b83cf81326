"""The upload service: answer peers' block requests from the local store."""

import asyncio

from peercloud.errors import IntegrityError, NotFoundError
from peercloud.net.link import PeerLink, RequestHandler
from peercloud.store.blockstore import BlockStore
from peercloud.wire import messages as m


def block_server(store: BlockStore) -> RequestHandler:
    """A request handler serving verified blocks; a damaged local block is reported missing."""

    async def on_request(link: PeerLink, msg: m.Message) -> None:
        if not isinstance(msg, m.GetBlock):
            return
        try:
            data = await asyncio.to_thread(store.get, msg.block)
        except (NotFoundError, IntegrityError):
            link.respond(msg.id, m.Error(msg.id, "not_found", "block not held here"))
            return
        await link.writable()
        link.respond(msg.id, m.BlockData(msg.id, msg.block), data)

    return on_request
