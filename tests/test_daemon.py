"""Real daemons on loopback: sharing, status, failover, bad peers, and the API's guard."""

import asyncio
import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercloud.identity import Identity
from peercloud.net.link import Address, PeerError, PeerLink, dial, listen
from peercloud.wire import messages as m

from .conftest import run_cli, run_cli_async
from .daemons import Daemon, block_files, connected, journalled, partial_mib, wait_for


def link(a: Daemon, b: Daemon) -> None:
    a.cli("peers", "add", b.address)
    wait_for(lambda: connected(a, b.peer_id) and connected(b, a.peer_id), what="peers to connect")


def test_two_daemons_share_an_object(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b = daemons("a"), daemons("b")
    src = make_file(5_000_000, name="movie.bin")
    added = a.json("add", str(src), "--class", "ec-2+1")
    link(b, a)
    out = tmp_path / "copy.bin"
    got = b.json("get", added["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert got["object_id"] == added["object_id"]
    status = b.json("status", added["object_id"])
    assert set(status) >= {"object_id", "local_percent", "complete_copies", "distributed_copies", "holders"}
    by_peer = {h["peer_id"]: h for h in status["holders"]}
    assert by_peer[a.peer_id]["percent"] == 100.0 and by_peer[a.peer_id]["online"] is True
    assert by_peer[a.peer_id]["blocks"] == list(range(status["total_blocks"]))
    assert status["local_percent"] == 0  # one pass: a get writes the file and stores no block
    assert block_files(b.home) == 1  # the manifest
    assert not list(tmp_path.glob(".copy.bin.*")), "the partial file and its journal outlived the get"
    # a's claim counts once a passed b's audit (a random leaf of sampled blocks, with its Merkle path).
    wait_for(lambda: b.json("status", added["object_id"])["complete_copies"] == 1, what="b to audit a")
    proved = {h["peer_id"]: h for h in b.json("status", added["object_id"])["holders"]}[a.peer_id]
    assert proved["confirmed"] == proved["blocks"] and not proved["failed_audit"]
    peers = a.json("peers")
    assert peers[0]["peer_id"] == b.peer_id and peers[0]["connected"] and peers[0]["bytes_out"] > 5_000_000
    node = a.json("status", "--node")
    assert node["peers_connected"] == 1 and node["peer_id"] == a.peer_id and node["uptime"] > 0
    # A verify cap is enough to pin: b ends up with every block, a complete copy.
    pinned = b.json("pin", added["verify_cap"])
    assert pinned["object_id"] == added["object_id"]
    after = b.json("status", added["object_id"])
    assert after["local_percent"] == 100.0 and after["complete_copies"] == 2
    human = b.cli("status", added["object_id"]).stdout
    assert "█" in human and a.peer_id[:13] in human


def test_startup_removes_what_a_crash_left_behind(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], home: Path
) -> None:
    # A block deleted just before a power cut can come back as a file no index row names (deletes
    # are not directory-synced): the daemon clears such files when it starts, keeping real blocks.
    run_cli(home, "add", str(make_file(300_000)), check=True)
    kept = block_files(home)
    stray = home / "blocks" / "ab" / ("ab" * 32)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"deleted before the cut")
    (home / "tmp" / "half-written.tmp").write_bytes(b"x")
    d = daemons(home.name)
    wait_for(lambda: not stray.exists() and not any((home / "tmp").iterdir()), what="leftovers to go")
    assert block_files(home) == kept and d.cli("fsck").returncode == 0


def test_peers_persist_and_reconnect_after_restart(daemons: Callable[[str], Daemon]) -> None:
    a, b = daemons("a"), daemons("b")
    link(b, a)
    assert b.stop() == 0
    b2 = daemons("b")
    wait_for(lambda: connected(b2, a.peer_id), what="reconnect after restart")
    b2.cli("peers", "rm", a.peer_id)
    assert b2.json("peers") == []


def test_source_killed_mid_transfer(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b, c = daemons("a"), daemons("b"), daemons("c")
    src = make_file(300 * 1024 * 1024, name="big.bin")
    added = a.json("add", str(src), "--class", "replica-2")
    link(b, a)
    b.json("pin", added["verify_cap"])
    link(c, a)
    link(c, b)
    out = tmp_path / "out.bin"
    getter = run_cli_async(c.home, "get", added["read_cap"], "-o", str(out))
    wait_for(lambda: partial_mib(out) >= 40 or getter.poll() is not None, what="transfer to start")
    a.kill()
    assert getter.poll() is None, "the transfer finished before the source could be killed"
    assert partial_mib(out) < 300
    assert getter.wait(timeout=120) == 0, getter.stderr.read() if getter.stderr else ""
    assert out.read_bytes() == src.read_bytes()


class FakePeer:
    """A peer speaking the real protocol that claims every block of an object and serves garbage."""

    def __init__(self, object_id: bytes, total_blocks: int) -> None:
        self.identity = Identity.generate()
        self.object_id = object_id
        self.total = total_blocks
        self.served = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        async def on_request(lk: PeerLink, msg: m.Message) -> None:
            if isinstance(msg, m.GetBlock):
                self.served += 1
                lk.respond(msg.id, m.BlockData(msg.id, msg.block), os.urandom(1000))

        def on_established(lk: PeerLink) -> None:
            lk.notify(m.Have(self.object_id, b"\xff" * ((self.total + 7) // 8)))

        def on_notice(lk: PeerLink, msg: m.Message) -> None:
            if isinstance(msg, m.HaveQuery):  # the node just learned the object: claim it all again
                on_established(lk)

        hello = m.Hello(m.PROTOCOL_VERSION, ("blocks",), "liar")
        self.server = await listen(
            "127.0.0.1", 0, self.identity, hello, on_request, on_established=on_established, on_notice=on_notice
        )
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.identity.peer_id}@127.0.0.1:{self.port}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_malicious_peer_is_banned_and_transfer_completes(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, c = daemons("a"), daemons("c")
    src = make_file(20 * 1024 * 1024, name="doc.bin")
    added = a.json("add", str(src), "--class", "replica-1")
    liar = FakePeer(bytes.fromhex(added["object_id"]), added["blocks"] - 1)
    try:
        c.cli("peers", "add", liar.address)
        wait_for(lambda: connected(c, str(liar.identity.peer_id)), what="liar to connect")
        link(c, a)
        out = tmp_path / "o.bin"
        c.json("get", added["read_cap"], "-o", str(out))
        assert out.read_bytes() == src.read_bytes()
        assert liar.served >= 1  # it was asked, and lied
        liar_row = next(p for p in c.json("peers") if p["peer_id"] == str(liar.identity.peer_id))
        assert liar_row["banned"] is True and liar_row["connected"] is False
        assert c.cli("fsck").returncode == 0  # nothing bad was stored
        assert "failed verification" in (c.home / "daemon.log").read_text()
    finally:
        liar.close()


def _garbage(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass


def test_bad_connections_are_refused_and_daemon_keeps_serving(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b = daemons("a"), daemons("b")
    src = make_file(3_000_000)
    added = a.json("add", str(src))
    rss_before = a.rss_kib()
    for i in range(60):
        _garbage(a.port, os.urandom(3000 + i))
        _garbage(a.port, b"\xff\xff" + b"\x00" * 1000)  # truncated record, then EOF
        _garbage(a.port, b"\x00\x20" + b"\x00" * 32)  # low-order key

    async def wrong_version_and_wrong_key() -> list[str]:
        reasons = []

        async def nothing(lk: PeerLink, msg: m.Message) -> None:
            return None

        addr = Address("127.0.0.1", a.port)
        for hello, expected in ((m.Hello(99), None), (m.Hello(1), Identity.generate().peer_id)):
            try:
                lk = await dial(addr, Identity.generate(), hello, nothing, expected_peer=expected)
                reasons.append(str((await lk.closed).reason))
            except PeerError as e:
                reasons.append(str(e))
        return reasons

    reasons = asyncio.run(wrong_version_and_wrong_key())
    assert "version" in reasons[0]
    assert "but reached" in reasons[1]
    link(b, a)
    out = tmp_path / "o"
    b.json("get", added["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert a.rss_kib() - rss_before < 50 * 1024  # garbage did not pile up in memory
    log = (a.home / "daemon.log").read_text()
    assert "closed: " in log


def test_api_requires_the_token(daemons: Callable[[str], Daemon]) -> None:
    a = daemons("a")
    url = f"http://{a.state['api']}/v1/objects"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert info.value.code == 401
    token = (a.home / "api.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    spec_url = f"http://{a.state['api']}/openapi.json"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(spec_url, timeout=10)
    assert info.value.code == 401
    spec = json.loads(urllib.request.urlopen(urllib.request.Request(spec_url, headers=auth), timeout=10).read())
    assert {"/v1/objects", "/v1/peers", "/v1/get", "/v1/pin", "/v1/node"} <= set(spec["paths"])
    ok = urllib.request.urlopen(urllib.request.Request(url, headers=auth))
    assert json.loads(ok.read()) == []


def test_commands_needing_the_daemon_say_so(home: Path) -> None:
    for args in (("pin", "0" * 64), ("status", "--node")):
        proc = run_cli(home, *args)
        assert proc.returncode == 6
        assert "peercloud up" in proc.stderr and "Traceback" not in proc.stderr


def bytes_from(d: Daemon, peer_id: str) -> int:
    return int(next(p for p in d.json("peers") if p["peer_id"] == peer_id)["bytes_in"])


def get_under_way(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> tuple[Daemon, Daemon, Path, dict[str, Any], Path, "subprocess.Popen[str]"]:
    """a holds a 300 MiB object, b is getting it (the CLI still running)."""
    a, b = daemons("a"), daemons("b")
    src = make_file(300 * 1024 * 1024, name="big.bin")
    added = a.json("add", str(src), "--class", "replica-1")
    link(b, a)
    out = tmp_path / "out.bin"
    return a, b, src, added, out, run_cli_async(b.home, "get", added["read_cap"], "-o", str(out))


def test_interrupted_get_resumes_with_the_segments_it_had(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b, src, added, out, getter = get_under_way(daemons, make_file, tmp_path)
    wait_for(lambda: partial_mib(out) >= 60 or getter.poll() is not None, what="transfer to start")
    a.kill()  # the only source dies: the get fails cleanly, keeping what it verified
    assert getter.wait(timeout=120) != 0
    assert not out.exists()
    kept = journalled(out)  # segments (1 MiB) verified and durable in the partial file
    assert 60 <= kept < 300
    assert block_files(b.home) <= 1, "a get stores no blocks (the manifest at most)"
    assert b.cli("fsck").returncode == 0
    a2 = daemons("a")  # the source comes back (same home, new port)
    b.cli("peers", "add", a2.address)
    wait_for(lambda: connected(b, a2.peer_id), what="reconnect")
    # Audits prove a2's claim block by block (a 64 KiB leaf each): let them finish before counting.
    wait_for(lambda: b.json("status", added["object_id"])["complete_copies"] >= 1, 60, "b to prove a2's copy")
    before = bytes_from(b, a2.peer_id)
    b.json("get", added["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    fetched = bytes_from(b, a2.peer_id) - before
    assert fetched < len(src.read_bytes()) - (kept - 2) * 1024 * 1024  # only the missing segments travelled
    assert not list(tmp_path.glob(".out.bin.*")), "the partial file and its journal outlived the get"


def test_get_resumes_after_the_getter_is_killed(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b, src, added, out, getter = get_under_way(daemons, make_file, tmp_path)
    wait_for(lambda: journalled(out) >= 64 or getter.poll() is not None, what="a journalled part")
    b.kill()  # the getting daemon dies mid-way (SIGKILL): its journal says what is safe to keep
    getter.wait(timeout=30)
    assert not out.exists()
    kept = journalled(out)
    assert 64 <= kept < 300, kept
    b2 = daemons("b")
    link(b2, a)
    wait_for(lambda: b2.json("status", added["object_id"])["complete_copies"] >= 1, 60, "b to prove a's copy")
    before = bytes_from(b2, a.peer_id)
    b2.json("get", added["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    fetched = bytes_from(b2, a.peer_id) - before
    assert fetched < len(src.read_bytes()) - (kept - 2) * 1024 * 1024  # the journalled segments stayed
