"""The asyncio driver on real loopback sockets."""

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peercloud.content import merkle
from peercloud.identity import Identity
from peercloud.net.link import Address, PeerError, PeerLink, dial, listen
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Index
from peercloud.swarm.upload import block_server
from peercloud.wire import messages as m

HELLO = m.Hello(m.PROTOCOL_VERSION, (), "test")
MARKER = b"PLAINTEXT-MARKER-0123456789"


async def _no_requests(link: PeerLink, msg: m.Message) -> None:
    raise AssertionError("client got a request")


class Server:
    def __init__(self, tmp: Path) -> None:
        self.identity = Identity.generate()
        self.store = BlockStore(tmp, Index(tmp / "i.sqlite"))
        self.links: list[PeerLink] = []

    async def start(self) -> Address:
        self.server = await listen(
            "127.0.0.1", 0, self.identity, HELLO, block_server(self.store.get), on_established=self.links.append
        )
        port = self.server.sockets[0].getsockname()[1]
        return Address("127.0.0.1", port)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, Address]]:
    s = Server(tmp_path)
    address = await s.start()
    yield s, address
    s.server.close()
    await s.server.wait_closed()


async def test_fetch_blocks_and_ping(server: tuple[Server, Address]) -> None:
    s, address = server
    blocks = [os.urandom(n) for n in (0, 1000, 1024 * 1024 + 16, 3 * 65519 + 7)]
    ids = [s.store.put(b) for b in blocks]
    client = Identity.generate()
    link = await dial(address, client, HELLO, _no_requests, expected_peer=s.identity.peer_id)
    assert link.peer_id == s.identity.peer_id
    got = await asyncio.gather(*(link.get_block(i) for i in ids * 3))  # pipelined on one connection
    assert got == blocks * 3
    assert await link.ping() > 0
    with pytest.raises(PeerError, match="not_found"):
        await link.get_block(merkle.block_id(b"nothing"))
    await asyncio.sleep(0.05)
    assert [lk.peer_id for lk in s.links] == [client.peer_id]
    link.close()


async def test_dialing_the_wrong_peer_id_fails_clearly(server: tuple[Server, Address]) -> None:
    s, address = server
    impostor = Identity.generate().peer_id
    with pytest.raises(PeerError, match=f"dialed {impostor} but reached {s.identity.peer_id}"):
        await dial(address, Identity.generate(), HELLO, _no_requests, expected_peer=impostor)


async def test_unreachable_address_fails_clearly() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(PeerError, match="cannot connect"):
        await dial(Address("127.0.0.1", port), Identity.generate(), HELLO, _no_requests)


async def _raw(address: Address, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(data)
    writer.write_eof()
    await writer.drain()
    try:
        got = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return got


async def test_garbage_connections_do_not_hurt_the_server(server: tuple[Server, Address]) -> None:
    s, address = server
    bid = s.store.put(b"still served")
    attacks = [
        os.urandom(5000),  # random bytes
        struct.pack(">H", 65535) + b"\x00" * 100,  # truncated handshake record, then EOF
        b"\xff\xff" + os.urandom(65535),  # full-size garbage handshake message
        b"\x00\x20" + b"\x00" * 32,  # an all-zero (low-order) Curve25519 key
    ]
    for attack in attacks:
        await _raw(address, attack)  # the server closes or waits; neither crashes it
    link = await dial(address, Identity.generate(), HELLO, _no_requests, expected_peer=s.identity.peer_id)
    assert await link.get_block(bid) == b"still served"
    link.close()


async def test_wire_capture_shows_no_plaintext(server: tuple[Server, Address]) -> None:
    s, address = server
    block = MARKER * 40_000  # 1 MiB of recognisable bytes
    bid = s.store.put(block)
    captured = bytearray()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(address.host, address.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                captured.extend(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    proxy_addr = Address("127.0.0.1", proxy.sockets[0].getsockname()[1])
    client = Identity.generate()
    link = await dial(proxy_addr, client, HELLO, _no_requests, expected_peer=s.identity.peer_id)
    assert await link.get_block(bid) == block
    link.close()
    await asyncio.sleep(0.1)
    proxy.close()
    assert len(captured) > len(block)  # the block did cross the wire
    assert MARKER[:12] not in captured
    assert bid not in captured  # even which block was asked for is hidden
    assert b"hello" not in captured
    assert b"test" not in captured
