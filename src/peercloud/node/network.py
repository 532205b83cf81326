"""How this node reaches peers and helps others reach each other: the address book and record
exchange, the directory client and role, the relay client and role, wired over the peer manager.

Composition only: each concern lives in its room (`connect/`, `directory/`, `relay/`); this is
where the daemon plugs them into one another and routes their messages.
"""

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from peercloud.cloud.document import CloudDoc, Invite
from peercloud.connect.book import AddressBook, interface_addresses, kind_of
from peercloud.connect.mdns import LanDiscovery
from peercloud.connect.punch import Puncher
from peercloud.connect.reach import Reach
from peercloud.connect.record import Kind
from peercloud.connect.upnp import PortMapper
from peercloud.directory.client import DirectoryClient
from peercloud.directory.server import DirectoryServer
from peercloud.identity import PeerId
from peercloud.net.link import Address, PeerLink, parse_peer
from peercloud.node.local import LocalNode
from peercloud.relay.client import RelayClient
from peercloud.relay.server import RelayServer
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m

ROLES = frozenset({"directory", "relay"})  # what `up --role` may add
PUNCH_RETRY_CHECK = 30.0  # seconds between looks for relayed links due another punch


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
        doc: Callable[[], CloudDoc | None],
    ) -> None:
        self.node = node
        self.peers = peers
        self.book = book
        self.listening = listening
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
        peers.from_listen_port = lambda peer: peer in self.directories.directories or peer in self.relays.relays
        self.puncher = Puncher(
            lambda link: peers.context(link.peer_id),  # type: ignore[arg-type]
            lambda: peers.local(),  # a punch always leaves from our listening port
            self._public,
            peers.register,
            self._spawn,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.upnp = PortMapper(
            lambda: Address.parse(listening()[0]).port,
            lambda: [a.rpartition(":")[0] for a in interface_addresses(listening()) if kind_of(a) is Kind.LAN],
            self.reach.refresh,
        )
        self.reach.mapped = lambda: self.upnp.mapped
        self.lan = LanDiscovery(
            node.identity.peer_id,
            lambda: d.cloud_id if (d := doc()) else None,
            lambda: [x.peer_id for x in d.members] if (d := doc()) else [],
            lambda: Address.parse(listening()[0]).port,
            self._found_on_lan,
        )

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
        self._spawn(self._punch_later())
        if not _loopback(self.listening()[0]):
            self.lan.start()  # a node on loopback only has no LAN to discover, nor a router
            if self.node.config.upnp:
                self.upnp.start()

    async def stop(self) -> None:
        """Stop renewing, publishing, relaying and advertising."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await self.lan.stop()
        await self.upnp.stop()
        self.reach.stop()
        self.directories.stop()
        self.relays.stop()
        for task in self._tasks:
            task.cancel()
        if self.relay is not None:
            self.relay.stop()

    def on_link(self, link: PeerLink) -> None:
        """A new link: records to exchange, maybe a directory to publish to or a relay to reserve on."""
        self.reach.on_link(link)
        self.directories.on_link(link)
        self.relays.on_link(link)
        self._maybe_punch(link)

    def on_notice(self, link: PeerLink, msg: m.Message) -> bool:
        """Handle the notices of reach; False for others."""
        if isinstance(msg, m.Records):
            self.reach.on_records(link, msg)
        elif isinstance(msg, m.CircuitIncoming):
            self.relays.on_incoming(link, msg)
        elif isinstance(msg, m.PunchGo):
            self.puncher.on_go(link)
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
        elif isinstance(msg, m.Punch):
            if link.path != "relayed":
                await link.answer(msg.id, m.Error(msg.id, "refused", "punching is for relayed links"))
            else:
                await self.puncher.answer(link, msg)
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

    def _found_on_lan(self, peer: PeerId, addresses: list[str]) -> None:
        """A member advertised itself on our LAN: dial it there now."""
        self.peers.ensure(peer, addresses)
        self.peers.wake(peer)

    def _public(self) -> list[str]:
        """Our public addresses as others observed them: what a punch aims at."""
        return [a for a in dict.fromkeys(self.reach.observed.values()) if kind_of(a) is Kind.PUBLIC]

    def _maybe_punch(self, link: PeerLink) -> None:
        """Over a relayed link we dialed, try for a direct path (the other side answers)."""
        if link.path == "relayed" and link.conn.initiator and self.puncher.due(link):
            self._spawn(self.puncher.start(link))

    async def _punch_later(self) -> None:
        """Punches that failed are tried again, with backoff, while the link stays relayed."""
        while True:
            await asyncio.sleep(PUNCH_RETRY_CHECK)
            for link in list(self.peers.links.values()):
                self._maybe_punch(link)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        """How this node is reachable, and what its roles do, for `status --node`."""
        out = self.reach.status()
        out["relays"] = [
            {
                "relay": f"{peer}",
                "expires_at": int(at),
                "uptime": round(self.relays.uptime[peer].ratio(), 3),
                "rtt_ms": round(rtt * 1000, 1) if (rtt := self.relays.rtt(peer)) is not None else None,
            }
            for peer, at in sorted(self.relays.reserved.items())
        ]
        out["upnp"] = self.upnp.status()
        if self.relay is not None:
            out["relay_role"] = self.relay.status()
        if self.directory is not None:
            out["directory_role"] = {"records": len(self.directory.records)}
        return out


def _loopback(listen: str) -> bool:
    """True for a listener bound to a loopback address (tests, a node kept to this machine)."""
    host = Address.parse(listen).host
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
