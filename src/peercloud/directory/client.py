"""The directory client: publish our record to every configured directory, learn the address each
sees us from, and look up peers we cannot reach where we last knew them.

Directories are ordinary peers this node keeps a link to (`PeerManager.ensure`); losing one only
means fewer introductions, never a broken link to a peer already found.
"""

import asyncio
import logging
from collections.abc import Callable

from peercloud.connect.book import AddressBook
from peercloud.connect.record import PeerRecord, RecordError
from peercloud.identity import PeerId
from peercloud.net.link import Address, PeerError, PeerLink
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
CALL_TIMEOUT = 10.0


class DirectoryClient:
    """Publishes to, and looks up in, the configured directories."""

    def __init__(
        self,
        book: AddressBook,
        links: Callable[[], dict[PeerId, PeerLink]],
        keep: Callable[[PeerId, list[str]], None],
        observed: Callable[[PeerId, str], None],
    ) -> None:
        self.book = book
        self.links = links
        self.keep = keep  # keep a link to a directory (PeerManager.ensure)
        self.observed = observed  # a directory saw us come from this address
        self.directories: dict[PeerId, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, peer: PeerId, address: Address) -> None:
        """Use one more directory (from config or an invite)."""
        if peer in self.directories:
            return
        self.directories[peer] = str(address)
        self.keep(peer, [str(address)])
        link = self.links().get(peer)
        if link is not None:
            self.on_link(link)

    def configured(self) -> list[str]:
        """PEERID@HOST:PORT of every directory in use (what invites hand on)."""
        return [f"{peer}@{address}" for peer, address in self.directories.items()]

    def on_link(self, link: PeerLink) -> None:
        """A link to a directory came up: publish our record there."""
        if link.peer_id in self.directories and self.book.own is not None:
            self._spawn(self._publish(link, self.book.own))

    def on_own_record(self, rec: PeerRecord) -> None:
        """Our record changed: every connected directory gets it."""
        for peer in self.directories:
            link = self.links().get(peer)
            if link is not None:
                self._spawn(self._publish(link, rec))

    async def lookup(self, peer: PeerId) -> bool:
        """Ask the connected directories for a peer's record; True when a newer one was learned."""
        learned = False
        for directory in list(self.directories):
            link = self.links().get(directory)
            if link is None or directory == peer:
                continue
            try:
                answer = await link.call(m.Lookup(link.next_id(), peer.public_key), CALL_TIMEOUT)
                assert isinstance(answer.message, m.Found)
                learned = self.book.learn(answer.message.record) is not None or learned
            except PeerError as e:
                if e.code != "not_found":
                    log.info("lookup of %s at directory %s failed: %s", peer.short(), directory.short(), e)
            except RecordError as e:
                log.info("directory %s gave a bad record for %s: %s", directory.short(), peer.short(), e)
        return learned

    def stop(self) -> None:
        """Cancel publishes in flight."""
        for task in self._tasks:
            task.cancel()

    async def _publish(self, link: PeerLink, rec: PeerRecord) -> None:
        try:
            answer = await link.call(m.Publish(link.next_id(), rec.raw), CALL_TIMEOUT)
        except PeerError as e:
            log.info("publishing our record to directory %s failed: %s", link.peer_id, e)
            return
        assert isinstance(answer.message, m.Published)
        assert link.peer_id is not None
        self.observed(link.peer_id, answer.message.observed)

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
