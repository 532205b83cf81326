"""The relayed path: ask a relay that holds the peer's reservation for a circuit, join it, and run
Noise XX with the peer through it (the relay copies ciphertext it cannot read)."""

import asyncio
import socket
from dataclasses import replace

from peercloud.connect.dial import DIALERS, DialContext
from peercloud.connect.record import Candidate, Kind
from peercloud.net.link import Address, PeerError, PeerLink, dial, parse_peer
from peercloud.relay import splice
from peercloud.wire import messages as m

CALL_TIMEOUT = 10.0


async def dial_relayed(candidate: Candidate, ctx: DialContext) -> PeerLink:
    """A link to `ctx.peer` through the relay named by the candidate (`RELAYPEERID@HOST:PORT`)."""
    relay, address = parse_peer(candidate.address)
    control = ctx.links().get(relay)
    temporary = control is None
    if control is None:  # no link to that relay yet: one just to ask for the circuit
        control = await dial(address, ctx.identity, ctx.hello, ctx.on_request, relay, ctx.on_notice)
    try:
        answer = await control.call(m.CircuitOpen(control.next_id(), ctx.peer.public_key), CALL_TIMEOUT)
        circuit = answer.message
        assert isinstance(circuit, m.Circuit)
        where = Address(address.host, circuit.port)
        sock = await join_circuit(where, circuit.token)
        hello = replace(ctx.hello, path="relayed")
        link = await dial(where, ctx.identity, hello, ctx.on_request, ctx.peer, ctx.on_notice, sock=sock)
    finally:
        if temporary:
            control.close("circuit set up")
    link.via = relay
    return link


async def join_circuit(address: Address, token: bytes) -> socket.socket:
    """Open a TCP connection to a relay's splice port, present the token, wait for GO."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(splice.JOIN_TIMEOUT):
            await loop.sock_connect(sock, (address.host, address.port))
            await loop.sock_sendall(sock, splice.MAGIC + token)
            go = await loop.sock_recv(sock, 1)
        if go != splice.GO:
            raise PeerError(f"relay at {address} closed the circuit before it was ready")
    except TimeoutError:
        sock.close()
        raise PeerError(f"relay circuit at {address} was not ready within {splice.JOIN_TIMEOUT:.0f} s") from None
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


DIALERS[Kind.RELAY] = dial_relayed
