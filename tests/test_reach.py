"""Reaching members that moved: signed peer records passed between members, refused when forged or old."""

import time
from dataclasses import replace
from pathlib import Path

import msgpack

from peercloud.connect.reach import BURST, RATE
from peercloud.connect.record import RECORD_CONTEXT, verify
from peercloud.node.config import load_config
from peercloud.relay.server import RelaySettings
from peercloud.wire import messages as m

from .conftest import run_cli
from .daemons import Daemon, connected, wait_for
from .test_cloud import Raw, Start, all_online, make_cloud

FOUND_WITHIN = 30.0  # the bound for finding a member again after it moved


def node(d: Daemon) -> dict[str, object]:
    result: dict[str, object] = d.json("status", "--node")
    return result


def test_members_that_moved_find_each_other_through_a_third(daemons: Start) -> None:
    a, b, c = make_cloud(daemons, 3)
    old = {b.peer_id: b.port, c.peer_id: c.port}
    assert b.stop() == 0 and c.stop() == 0
    # Both come back on new ports: the cloud document still names the old ones, and neither can
    # dial the other there. Only a, unmoved, hears both of their new records and passes them on.
    b2, c2 = daemons("p1"), daemons("p2")
    assert b2.port != old[b.peer_id] and c2.port != old[c.peer_id]
    wait_for(
        lambda: connected(b2, c2.peer_id) and connected(c2, b2.peer_id), FOUND_WITHIN, "b and c to find each other"
    )
    for d in (a, b2, c2):
        wait_for(lambda d=d: all_online(d, 3), FOUND_WITHIN, f"{d.home.name} to see every member online")
    rows = {r["peer_id"]: r for r in c2.json("peers")}
    assert rows[b2.peer_id]["path"] == "lan" and rows[b2.peer_id]["rtt_ms"] is not None
    assert {"via", "rate_in", "rate_out", "bytes_in", "bytes_out", "since", "address"} <= set(rows[b2.peer_id])
    reach = node(b2)["reachable"]
    assert isinstance(reach, dict) and reach["candidates"] == [{"kind": "lan", "address": f"127.0.0.1:{b2.port}"}]


def test_forged_and_replayed_records_change_nothing(daemons: Start) -> None:
    a, b = make_cloud(daemons, 2)
    spy = Raw()
    try:
        spy.connect(b)  # every link gets the node's own record
        wait_for(lambda: any(isinstance(x, m.Records) for x in spy.notices), 10, "b's record")
        first = next(x for x in spy.notices if isinstance(x, m.Records)).records[0]
        assert verify(first).peer_id.short() == b.peer_id[:13]
        assert b.stop() == 0
        b2 = daemons("p1")  # a new port, so a newer record
        wait_for(lambda: connected(a, b2.peer_id), 30, "a to reach b again")
        assert b2.stop() == 0
        wait_for(lambda: not connected(a, b2.peer_id), 10, "b to be gone")
        moved = f"127.0.0.1:{b2.port}"
        where = {r["peer_id"]: r["address"] for r in a.json("peers")}
        assert where[b.peer_id] == moved  # a dials b where its newest record says

        body, _sig = msgpack.unpackb(first)
        lie = body.replace(str(b.port).encode(), b"1")  # b's old record, pointing elsewhere
        forged = msgpack.packb([lie, spy.identity.sign(RECORD_CONTEXT + lie)])
        link = spy.connect(a)
        before = node(a)["reachable"]
        assert isinstance(before, dict)
        spy.notify(link, m.Records((first, forged)))  # an old record of b, replayed; one forged
        wait_for(lambda: node(a)["reachable"]["records_refused"] == before["records_refused"] + 2, 10, "refusals")  # type: ignore[index]
        where = {r["peer_id"]: r["address"] for r in a.json("peers")}
        assert where[b.peer_id] == moved
        assert a.json("status", "--node")["peers_connected"] == 1  # the spy's link stays: records are no crime

        # A flood: 640 forged records at once. Each costs a signature check, so a peer gets 64 at
        # once and 16 a second after that; the rest is dropped unchecked.
        floods = []
        for n in range(640):
            fake = body.replace(str(b.port).encode(), str(10000 + n).encode())
            floods.append(msgpack.packb([fake, spy.identity.sign(RECORD_CONTEXT + fake)]))
        counted = node(a)["reachable"]["records_refused"]  # type: ignore[index]
        started = time.monotonic()
        for i in range(0, 640, m.MAX_RECORDS):
            spy.notify(link, m.Records(tuple(floods[i : i + m.MAX_RECORDS])))
        time.sleep(1.0)
        checked = node(a)["reachable"]["records_refused"] - counted  # type: ignore[index, operator]
        assert 0 < checked <= BURST + RATE * (time.monotonic() - started)
        assert {r["peer_id"]: r["address"] for r in a.json("peers")}[b.peer_id] == moved
    finally:
        spy.close()


def test_a_relay_that_dropped_us_is_ranked_after_a_steady_one(daemons: Start, tmp_path: Path) -> None:
    def configure(name: str, **settings: object) -> None:
        home = tmp_path / name
        run_cli(home, "init", check=True)
        replace(load_config(home / "config.toml"), **settings).save(home / "config.toml")  # type: ignore[arg-type]

    for name in ("steady", "flaky"):
        configure(name, relay=RelaySettings(listen="127.0.0.1:0"))  # two relays on one machine
    steady, flaky = daemons("steady", roles=("relay",)), daemons("flaky", roles=("relay",))
    configure("n", relays=tuple(f"{r.peer_id}@127.0.0.1:{r.port}" for r in (flaky, steady)))  # flaky first
    n = daemons("n")

    def held() -> dict[str, dict[str, object]]:
        return {r["relay"]: r for r in node(n)["reachable"]["relays"]}  # type: ignore[index]

    wait_for(lambda: len(held()) == 2, 15, "reservations on both relays")
    port = flaky.port
    assert flaky.stop() == 0
    wait_for(lambda: list(held()) == [steady.peer_id], 15, "the reservation on the stopped relay to lapse")
    time.sleep(2.0)
    daemons("flaky", port=port, roles=("relay",))  # back, same identity and address
    wait_for(lambda: len(held()) == 2, 30, "the reservation on the returned relay")
    rows = held()
    assert float(rows[flaky.peer_id]["uptime"]) < 0.9 <= float(rows[steady.peer_id]["uptime"])  # type: ignore[arg-type]
    assert rows[steady.peer_id]["rtt_ms"] is not None
    # The record names the steady relay first, whatever the order of config.toml.
    in_record = [c["address"] for c in node(n)["reachable"]["candidates"] if c["kind"] == "relay"]  # type: ignore[index]
    assert [a.split("@")[0] for a in in_record] == [steady.peer_id, flaky.peer_id]
