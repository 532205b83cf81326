"""Outgoing TCP from our listening port (SO_REUSEADDR + SO_REUSEPORT, shared with the listener).

A NAT that maps endpoint-independently then shows every peer, directory and relay the same
public address for us: the one a directory observes is the one a hole punch must reach. The
classic reason punching fails is an outgoing dial that does not reuse the listening port
(DESIGN.md §6). When that port cannot be used for a destination (its 4-tuple is taken, say by
an earlier connection in TIME_WAIT), the dial falls back to any port. Sockets on the listening
port close with a reset (SO_LINGER 0), so they leave no TIME_WAIT behind: a daemon restarted
within a minute can dial the same relay, and punch to the same peer, from the same port again.
"""

import asyncio
import errno
import logging
import socket
import struct

from peercloud.net.link import Address

log = logging.getLogger(__name__)


def _socket(local: Address | None, family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    if local is None:
        return sock
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind((local.host, local.port))
    except OSError as e:
        log.info("cannot dial from our listening port %s (%s): from any port then", local, e)
        sock.close()
        return _socket(None, family)
    return sock


async def connect_from(local: Address | None, remote: Address, timeout: float, fallback: bool = True) -> socket.socket:
    """A connected non-blocking socket to `remote`, from our listening port when possible (and,
    unless `fallback` is False, from any port when that 4-tuple is taken)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in remote.host else socket.AF_INET
    if local is not None and (":" in local.host) != (family == socket.AF_INET6):
        local = None  # an IPv4 listener cannot source an IPv6 connection
    sock = _socket(local, family)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (remote.host, remote.port))
    except OSError as e:
        sock.close()
        if fallback and local is not None and e.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
            log.info("the path from port %d to %s is taken (%s): from any port then", local.port, remote, e)
            return await connect_from(None, remote, timeout)
        raise
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
