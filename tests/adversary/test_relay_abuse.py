"""Hostile use of a relay on loopback: reservation and circuit floods beyond quota, circuits to
peers with no reservation, a node without the role, idle sockets on the splice port. Every
refusal is typed, and a real circuit through the same relay still works afterwards."""

import asyncio
import socket
import time
from dataclasses import replace
from pathlib import Path

from peercloud.connect.relay_dial import join_circuit
from peercloud.identity import PeerId
from peercloud.net.link import Address, PeerError, PeerLink, dial
from peercloud.node.config import load_config
from peercloud.relay.server import RelaySettings
from peercloud.wire import messages as m

from ..conftest import run_cli
from ..daemons import wait_for
from ..test_cloud import Raw, Start


def code_of(raw: Raw, link: PeerLink, msg: object) -> str:
    try:
        raw.call(link, msg)  # type: ignore[arg-type]
    except PeerError as e:
        return e.code
    return "ok"


def relay_status(d: object) -> dict[str, int]:
    return d.json("status", "--node")["reachable"]["relay_role"]  # type: ignore[attr-defined, no-any-return]


def test_relay_quotas_refuse_with_types_and_a_real_circuit_still_works(daemons: Start, tmp_path: Path) -> None:
    home = tmp_path / "relay"
    run_cli(home, "init", check=True)
    config = load_config(home / "config.toml")
    quotas = RelaySettings(listen="127.0.0.1:0", reservations=2, circuits_per_peer=2)
    replace(config, relay=quotas).save(home / "config.toml")
    relay = daemons("relay", roles=("relay",))
    plain = daemons("plain")
    a, b, c = Raw(), Raw(), Raw()
    try:
        la, lb, lc = a.connect(relay), b.connect(relay), c.connect(relay)
        reserved = b.call(lb, lambda i: m.Reserve(i)).message
        assert isinstance(reserved, m.Reserved) and reserved.port > 0
        assert reserved.observed.startswith("127.0.0.1:")
        assert code_of(c, lc, lambda i: m.Reserve(i)) == "ok"
        assert code_of(a, la, lambda i: m.Reserve(i)) == "full"  # two reservations held already
        nobody = PeerId(bytes(32))
        assert code_of(a, la, lambda i: m.CircuitOpen(i, nobody.public_key)) == "no_reservation"
        # Circuits to b: two allowed per peer, the third refused; b hears of each.
        to_b = lambda i: m.CircuitOpen(i, b.identity.peer_id.public_key)  # noqa: E731
        assert [code_of(a, la, to_b) for _ in range(3)] == ["ok", "ok", "over_quota"]
        wait_for(lambda: sum(isinstance(x, m.CircuitIncoming) for x in b.notices) == 2, 5, "b to hear of both")
        assert relay_status(relay)["circuits"] == 2
        # Circuits nobody joins are dropped after 10 s: the quota frees again.
        wait_for(lambda: relay_status(relay)["circuits"] == 0, 20, "unjoined circuits to go")
        # Idle sockets on the splice port: held at most until they present a token, and bounded.
        idle = [socket.create_connection(("127.0.0.1", reserved.port)) for _ in range(300)]
        wait_for(lambda: relay_status(relay)["joins_refused"] >= 300 - 256, 10, "the flood to be refused at the door")
        for s in idle:
            s.close()
        wait_for(lambda: relay_status(relay)["joining"] == 0, 10, "idle joins to go")
        # A node without the role says so; punching is only for relayed links, and an unasked
        # punch_go changes nothing.
        to_plain = a.connect(plain)
        assert code_of(a, to_plain, lambda i: m.Reserve(i)) == "refused"
        assert code_of(a, to_plain, lambda i: m.Punch(i, ("203.0.113.5:4650",))) == "refused"
        a.notify(to_plain, m.PunchGo())
        assert a.run(to_plain.ping()) < 5

        # And a real circuit: a reaches b through the relay, Noise end to end, and b's ping answers.
        circuit = a.call(la, to_b).message
        assert isinstance(circuit, m.Circuit)
        told = lambda: [x for x in b.notices if isinstance(x, m.CircuitIncoming)]  # noqa: E731
        wait_for(lambda: len(told()) == 3, 5, "b to hear of the third circuit")
        incoming = told()[-1]
        where = Address("127.0.0.1", circuit.port)

        async def end(raw: Raw, token: bytes, initiator: bool, peer: PeerId) -> PeerLink:
            sock = await join_circuit(where, token)
            hello = m.Hello(m.PROTOCOL_VERSION, (), "raw", path="relayed" if initiator else "")

            async def nothing(lk: PeerLink, msg: m.Message) -> None:
                return None

            return await dial(where, raw.identity, hello, nothing, peer, sock=sock, initiator=initiator)

        fa = asyncio.run_coroutine_threadsafe(end(a, circuit.token, True, b.identity.peer_id), a.loop)
        fb = asyncio.run_coroutine_threadsafe(end(b, incoming.token, False, a.identity.peer_id), b.loop)
        link_a, link_b = fa.result(15), fb.result(15)
        assert link_a.peer_id == b.identity.peer_id and link_b.peer_id == a.identity.peer_id
        assert link_b.conn.peer_hello is not None and link_b.conn.peer_hello.path == "relayed"
        started = time.monotonic()
        a.run(link_a.ping())
        assert time.monotonic() - started < 5
        assert relay_status(relay)["bytes_carried"] > 0
    finally:
        for raw in (a, b, c):
            raw.close()
