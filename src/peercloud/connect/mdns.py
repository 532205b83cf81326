"""LAN discovery over mDNS (zeroconf): members of one cloud on the same network find each other
with no directory and no typed address.

Each node advertises `_peercloud._tcp.local.` under an instance name that only members of its
cloud can link to it: the first 20 hex digits of BLAKE3, keyed by a key derived from the cloud ID
(which only members know), of the node's public key and the current hour. A stranger on the LAN
sees a name that changes every hour and says nothing of the cloud or the peer; a member computes
the name every other member would advertise (this hour and the last) and, when one appears,
hints its addresses to the dialer as `lan` candidates.
"""

import asyncio
import logging
import socket
import time
from collections.abc import Callable

import blake3
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from peercloud.identity import PeerId

log = logging.getLogger(__name__)
SERVICE = "_peercloud._tcp.local."
ROTATE = 3600  # seconds an advertised name lasts
LOOKUP_MS = 3000


def lan_key(cloud_id: bytes) -> bytes:
    """The key members derive from their cloud's ID for LAN names."""
    return blake3.blake3(cloud_id, derive_key_context="peercloud 2026 lan discovery v1").digest()


def instance_name(key: bytes, peer: PeerId, when: float) -> str:
    """The name a peer advertises during the hour `when` falls in."""
    hour = int(when // ROTATE).to_bytes(8, "big")
    return blake3.blake3(peer.public_key + hour, key=key).hexdigest()[:20]


class LanDiscovery:
    """Advertise ourselves and watch for the other members, while we are in a cloud."""

    def __init__(
        self,
        me: PeerId,
        cloud_id: Callable[[], bytes | None],
        members: Callable[[], list[PeerId]],
        port: Callable[[], int],
        found: Callable[[PeerId, list[str]], None],
    ) -> None:
        self.me = me
        self.cloud_id = cloud_id
        self.members = members
        self.port = port
        self.found = found  # a member is at these HOST:PORT addresses
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._task: asyncio.Task[None] | None = None
        self._lookups: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Advertise and browse in the background, re-advertising every hour (and on joining)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Withdraw our name and close the sockets."""
        if self._task is not None:
            self._task.cancel()
        for task in self._lookups:
            task.cancel()
        if self._zc is not None:
            try:
                if self._browser is not None:
                    await self._browser.async_cancel()
                await self._zc.async_unregister_all_services()
                await self._zc.async_close()
            except Exception as e:  # a network gone away must not break shutdown
                log.debug("mdns: closing: %s", e)

    async def _run(self) -> None:
        advertised: tuple[bytes, str] | None = None
        while True:
            cloud = self.cloud_id()
            name = instance_name(lan_key(cloud), self.me, time.time()) if cloud else None
            if cloud is not None and name is not None and advertised != (cloud, name):
                try:
                    await self._advertise(name)
                    advertised = (cloud, name)
                except OSError as e:
                    log.info("mdns: cannot advertise on this network: %s", e)
            await asyncio.sleep(min(60.0, ROTATE - time.time() % ROTATE + 1))

    async def _advertise(self, name: str) -> None:
        if self._zc is None:
            self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE, handlers=[self._on_change])
        if self._info is not None:
            await self._zc.async_unregister_service(self._info)
        addresses = [socket.inet_aton(a) for a in _ipv4_addresses()]
        self._info = AsyncServiceInfo(
            SERVICE, f"{name}.{SERVICE}", addresses=addresses, port=self.port(), server=f"{name}.local."
        )
        await self._zc.async_register_service(self._info)
        log.info("mdns: advertising this node on the LAN as %s", name)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Added:
            return
        cloud = self.cloud_id()
        if cloud is None:
            return
        label = name.removesuffix(f".{SERVICE}")
        key, now = lan_key(cloud), time.time()
        for peer in self.members():
            if peer != self.me and label in (instance_name(key, peer, now), instance_name(key, peer, now - ROTATE)):
                task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name, peer))
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)
                return

    async def _resolve(self, zeroconf: Zeroconf, name: str, peer: PeerId) -> None:
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(zeroconf, LOOKUP_MS) or info.port is None:
            return
        addresses = [f"{a}:{info.port}" for a in info.parsed_addresses(IPVersion.V4Only)]
        if addresses:
            log.info("mdns: found %s on the LAN at %s", peer.short(), ", ".join(addresses))
            self.found(peer, addresses)


def _ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    import ifaddr

    return [
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]
