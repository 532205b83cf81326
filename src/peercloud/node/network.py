"""How this node reaches peers and helps others reach each other: the address book and record
exchange, the directory client and role, the relay client and role, wired over the peer manager.

Composition only: each concern lives in its room (`connect/`, `directory/`, `relay/`); this is
where the daemon plugs them into one another and routes their messages.
"""

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from peercloud.cloud.document import Invite
from peercloud.connect.book import AddressBook
from peercloud.connect.reach import Reach
from peercloud.directory.client import DirectoryClient
from peercloud.directory.server import DirectoryServer
from peercloud.identity import PeerId
from peercloud.net.link import PeerLink, parse_peer
from peercloud.node.local import LocalNode
from peercloud.relay.client import RelayClient
from peercloud.relay.server import RelayServer
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m

ROLES = frozenset({"directory", "relay"})  # what `up --role` may add


class Network:
    """The reach of one daemon: records, directories, relays."""

    def __init__(
        self,
        node: LocalNode,
        peers: PeerManager,
        book: AddressBook,
        is_member: Callable[[PeerId], bool],
        listening: Callable[[], list[str]],
        roles: frozenset[str],
    ) -> None:
        self.node = node
        self.peers = peers
        self.book = book
        self.reach = Reach(book, lambda: peers.links, listening, is_member, peers.wake)
        self.directory = DirectoryServer() if "directory" in roles else None
        self.directories = DirectoryClient(book, lambda: peers.links, peers.ensure, self.reach.observe)
        settings = node.config.relay
        if "relay" in roles:
            settings = replace(settings, serve="all")
        self.relay = RelayServer(settings, is_member) if settings.serve != "none" else None
        self.relays = RelayClient(
            node.identity,
            peers.hello,
            lambda: peers.links,
            peers.ensure,
            peers.on_request,
            peers.on_notice,
            peers.register,
            self.reach.observe,
            self.reach.refresh,
        )
        self.reach.on_own = self.directories.on_own_record
        self.reach.relays = self.relays.candidates
        peers.lookup = self.directories.lookup

    async def start(self) -> None:
        """Our record, then the relay role's listener, then links to directories and relays."""
        self.book.load()
        if self.relay is not None:
            await self.relay.start()
        self.reach.start()
        for text in self.node.config.directories:
            self.directories.add(*parse_peer(text))
        for text in self.node.config.relays:
            self.relays.add(*parse_peer(text))

    def stop(self) -> None:
        """Stop renewing, publishing and relaying."""
        self.reach.stop()
        self.directories.stop()
        self.relays.stop()
        if self.relay is not None:
            self.relay.stop()

    def on_link(self, link: PeerLink) -> None:
        """A new link: records to exchange, maybe a directory to publish to or a relay to reserve on."""
        self.reach.on_link(link)
        self.directories.on_link(link)
        self.relays.on_link(link)

    def on_notice(self, link: PeerLink, msg: m.Message) -> bool:
        """Handle the notices of reach; False for others."""
        if isinstance(msg, m.Records):
            self.reach.on_records(link, msg)
        elif isinstance(msg, m.CircuitIncoming):
            self.relays.on_incoming(link, msg)
        else:
            return False
        return True

    async def on_request(self, link: PeerLink, msg: m.Message) -> bool:
        """Serve the requests of the directory and relay roles; False for others."""
        if isinstance(msg, m.Publish | m.Lookup):
            if self.directory is None:
                await link.answer(msg.id, m.Error(msg.id, "refused", "this node is not a directory"))
            else:
                await self.directory.on_request(link, msg)
        elif isinstance(msg, m.Reserve | m.CircuitOpen):
            if self.relay is None:
                await link.answer(msg.id, m.Error(msg.id, "refused", "this node is not a relay"))
            else:
                await self.relay.on_request(link, msg)
        else:
            return False
        return True

    def adopt(self, invite: Invite) -> None:
        """A joiner uses its admin's directories and relays at once (to reach the admin too)."""
        for text in invite.directories:
            self.directories.add(*parse_peer(text))
        for text in invite.relays:
            self.relays.add(*parse_peer(text))

    def remember(self, invite: Invite) -> None:
        """The join succeeded: the invite's directories and relays go into config.toml."""
        config = self.node.config
        directories = [d for d in invite.directories if d not in config.directories]
        relays = [r for r in invite.relays if r not in config.relays]
        if directories or relays:
            self.node.config = replace(
                config, directories=(*config.directories, *directories), relays=(*config.relays, *relays)
            )
            self.node.config.save(self.node.home.config_path)

    def status(self) -> dict[str, Any]:
        """How this node is reachable, and what its roles do, for `status --node`."""
        out = self.reach.status()
        out["relays"] = [
            {"relay": f"{peer}", "expires_at": int(at)} for peer, at in sorted(self.relays.reserved.items())
        ]
        if self.relay is not None:
            out["relay_role"] = self.relay.status()
        if self.directory is not None:
            out["directory_role"] = {"records": len(self.directory.records)}
        return out
