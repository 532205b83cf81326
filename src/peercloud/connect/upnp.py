"""Port mapping by UPnP IGD: the home router forwards our listening port to us.

The router is found by SSDP on each LAN interface and driven with async-upnp-client. The mapping
is a `mapped` candidate in our record (DESIGN.md §6): peers dial it before the public address a
directory observed, so a node behind a router that maps is reached directly, with no relay and no
punch. It is asked for with a lease and renewed at half of it (a router that rebooted has it again
within one renewal), and deleted at shutdown, leaving the router as we found it.

A router whose own external address is private (a NAT behind another NAT) is not used: what it
maps cannot be reached from outside, and advertising it would only send peers to a dead end.
"""

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from async_upnp_client.aiohttp import AiohttpRequester
from async_upnp_client.client import UpnpService
from async_upnp_client.client_factory import UpnpFactory
from async_upnp_client.exceptions import UpnpActionError, UpnpError
from async_upnp_client.search import async_search

from peercloud.connect.book import kind_of
from peercloud.connect.record import Kind

log = logging.getLogger(__name__)
GATEWAYS = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
CONNECTIONS = ("WANIPConnection", "WANPPPConnection")  # service types that map ports
LEASE = 3600  # seconds a mapping is asked for; renewed at half of it
SEARCH_TIMEOUT = 2  # seconds to wait for gateways to answer an M-SEARCH
RETRY = 300.0  # seconds before looking again when no gateway answered or it refused
CALL_TIMEOUT = 5.0  # seconds one SOAP call to the router may take
CONFLICT = 718  # ConflictInMappingEntry: another host holds that external port
PERMANENT_ONLY = 725  # OnlyPermanentLeasesSupported: the router takes lease 0 only


class PortMapper:
    """Keeps one TCP port mapping on the gateway for our listening port, for as long as we run."""

    def __init__(self, port: Callable[[], int], lan_ips: Callable[[], list[str]], on_change: Callable[[], None]):
        self.port = port  # our listening port: mapped to the same external port when free
        self.lan_ips = lan_ips  # our private IPv4 addresses, where a gateway may answer
        self.on_change = on_change  # the mapping appeared, moved or went: re-sign our record
        self.mapped: str | None = None  # EXTERNAL_IP:PORT the router forwards to us
        self.gateway: str | None = None  # the router's description URL, for status
        self.error: str | None = None  # why there is no mapping, for status
        self._service: UpnpService | None = None
        self._client = ""  # our address on the gateway's network: where it forwards to
        self._lease = LEASE
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Look for a gateway and keep a mapping on it, in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop renewing and delete the mapping (at most CALL_TIMEOUT s: shutdown must not hang)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.mapped is not None and self._service is not None:
            port = int(self.mapped.rsplit(":", 1)[1])
            try:
                await self._call("DeletePortMapping", NewRemoteHost="", NewExternalPort=port, NewProtocol="TCP")
                log.info("removed the port mapping %s from the gateway", self.mapped)
            except (UpnpError, OSError, TimeoutError) as e:
                log.info("could not remove the port mapping %s: %s", self.mapped, e)
            self.mapped = None

    def status(self) -> dict[str, Any]:
        """The mapping as `status --node` shows it."""
        return {"mapped": self.mapped, "gateway": self.gateway, "error": self.error if self.mapped is None else None}

    async def _run(self) -> None:
        while True:
            try:
                await self._map()
                await asyncio.sleep(self._lease / 2 if self._lease else LEASE / 2)
            except (UpnpError, OSError, TimeoutError, LookupError) as e:
                self.error = str(e) or type(e).__name__
                self._service = None  # look for the gateway again: it may have changed
                if self.mapped is not None:
                    log.info("port mapping %s lost: %s", self.mapped, self.error)
                    self.mapped = None
                    self.on_change()
                else:
                    log.debug("no port mapping: %s", self.error)
                await asyncio.sleep(RETRY)

    async def _map(self) -> None:
        if self._service is None:
            await self._discover()
        reply = await self._call("GetExternalIPAddress")
        external = str(reply.get("NewExternalIPAddress") or "")
        if kind_of(f"{external}:0") is not Kind.PUBLIC:
            raise LookupError(f"the gateway's external address {external or '(none)'} is not public")
        port = await self._add(self.port())
        address = f"{external}:{port}"
        if address != self.mapped:
            log.info("the gateway maps %s to us (lease %d s)", address, self._lease)
            self.mapped, self.error = address, None
            self.on_change()

    async def _add(self, port: int) -> int:
        """Map external `port` to our listening port; the port the router gave us."""
        args = {
            "NewRemoteHost": "",
            "NewProtocol": "TCP",
            "NewInternalPort": self.port(),
            "NewInternalClient": self._client,
            "NewEnabled": True,
            "NewPortMappingDescription": "peercloud",
        }
        try:
            await self._call("AddPortMapping", NewExternalPort=port, NewLeaseDuration=self._lease, **args)
        except UpnpActionError as e:
            if e.error_code == PERMANENT_ONLY and self._lease:
                self._lease = 0  # a permanent mapping then; stop() deletes it
                return await self._add(port)
            if e.error_code != CONFLICT or self._service is None or not self._service.has_action("AddAnyPortMapping"):
                raise
            # Another host has our port: IGD 2 lets the router pick a free one.
            reply = await self._call("AddAnyPortMapping", NewExternalPort=port, NewLeaseDuration=self._lease, **args)
            return int(reply["NewReservedPort"])
        return port

    async def _discover(self) -> None:
        """The first gateway that answers an M-SEARCH on one of our LAN addresses."""
        found: list[str] = []

        async def answered(headers: Any) -> None:
            if headers.get("location"):
                found.append(str(headers["location"]))

        for ip in self.lan_ips():
            for target in GATEWAYS:
                await async_search(answered, timeout=SEARCH_TIMEOUT, search_target=target, source=(ip, 0))
                if found:
                    break
            if found:
                break
        if not found:
            raise LookupError("no UPnP gateway answered")
        location = found[0]
        device = await UpnpFactory(AiohttpRequester(int(CALL_TIMEOUT))).async_create_device(location)
        for d in device.all_devices:
            for service in d.services.values():
                if any(kind in service.service_type for kind in CONNECTIONS) and service.has_action("AddPortMapping"):
                    self._service = service
                    self._client = _source_toward(urlparse(location).hostname or "")
                    self.gateway = location
                    return
        raise LookupError(f"the gateway at {location} has no port mapping service")

    async def _call(self, action: str, **args: Any) -> Any:
        assert self._service is not None
        async with asyncio.timeout(CALL_TIMEOUT):
            return await self._service.action(action).async_call(**args)


def _source_toward(host: str) -> str:
    """Our address on the way to `host` (no packet is sent): the client the router forwards to."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 1900))
        address = str(s.getsockname()[0])
    ipaddress.IPv4Address(address)  # a gateway reached over IPv6 maps nothing for IPv4
    return address
