"""Peers behind NATs, in a lab of network namespaces (tests/natlab.py): a relay carries what no
direct path can, seeing only ciphertext, and a second relay takes over when the first dies."""

import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from peercloud.content.manifest import Manifest
from peercloud.node.config import load_config
from peercloud.relay.server import RelaySettings

from .conftest import random_bytes
from .daemons import partial_mib
from .natlab import Lab, LabDaemon, natlab

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    # The lab needs root, iproute2, nftables, tcpdump, miniupnpd and stund; `make` installs them.
    assert os.geteuid() == 0, "the NAT lab needs root"
    for tool in ("ip", "nft", "tcpdump", "miniupnpd", "stund"):
        assert shutil.which(tool), f"{tool} is missing: run `make test`, which installs it"


def configure(lab: Lab, name: str, home: str, **settings: object) -> None:
    """A node home with some config.toml settings changed, as a user edits it."""
    path = lab.root / home
    lab.cli(name, path, "init")
    config = load_config(path / "config.toml")
    replace(config, **settings).save(path / "config.toml")  # type: ignore[arg-type]


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (AssertionError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def peer_row(d: LabDaemon, other: LabDaemon) -> dict[str, object]:
    return next(r for r in d.json("peers") if r["peer_id"] == other.peer_id)


def reserved(d: LabDaemon, count: int = 1) -> bool:
    return len(d.json("status", "--node")["reachable"]["relays"]) >= count


def cloud_of_two(lab: Lab, relays: list[LabDaemon]) -> tuple[LabDaemon, LabDaemon]:
    """An admin in home 1 and a member in home 2, who know only the public host's roles."""
    addresses = [r.address for r in relays]
    configure(lab, "h1a", "a", directories=tuple(addresses[:1]), relays=tuple(addresses))
    a = lab.start("h1a", "a")
    a.cli("cloud", "create", "lab")
    wait_until(lambda: reserved(a, len(relays)), 30, "the admin's reservations")
    token = a.cli("cloud", "invite").stdout.strip().splitlines()[-1]
    b = lab.start("h2a", "b")  # configured with nothing: the invite brings directory and relays
    b.cli("cloud", "join", token)
    wait_until(lambda: peer_row(b, a)["path"] in ("relayed", "punched"), 30, "b to reach a through the relay")
    return a, b


def transfer(a: LabDaemon, b: LabDaemon, tmp: Path, size: int, seed: int) -> tuple[dict[str, str], bytes]:
    """`a` adds a file of `size` random bytes, `b` gets it: the bytes must match."""
    src, out = tmp / f"sent-{seed}.bin", tmp / f"got-{seed}.bin"
    data = random_bytes(size, seed=seed)
    src.write_bytes(data)
    added: dict[str, str] = a.json("add", str(src), "--class", "replica-1")
    b.json("get", added["read_cap"], "-o", str(out))
    assert out.read_bytes() == data
    return added, data


def logged(d: LabDaemon, text: str) -> bool:
    return text in (d.home.parent / f"{d.home.name}.log").read_text()


TCPDUMP_FLAGS = ("-s", "0", "-B", "262144")  # whole packets, a 256 MiB capture buffer


def test_behind_a_symmetric_nat_a_relay_carries_a_50mib_get_and_sees_only_ciphertext(tmp_path: Path) -> None:
    with natlab(tmp_path, {1: (1, "cone"), 2: (1, "symmetric")}) as lab:
        pub = lab.start("pub", "pub", roles=("directory", "relay"))
        capture = tmp_path / "relay.pcap"
        dump = subprocess.Popen(
            # A 256 MiB capture buffer: the get crosses the relay twice (in and out) at several
            # hundred MB/s, faster than a loaded machine lets tcpdump write it out.
            ["ip", "netns", "exec", lab.ns("pub"), "tcpdump", "-i", "eth0", "-w", str(capture), *TCPDUMP_FLAGS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)  # tcpdump is listening
            a, b = cloud_of_two(lab, [pub])
            added, data = transfer(a, b, tmp_path, 50 * 1024 * 1024, seed=50)
            row = peer_row(b, a)
            assert row["path"] == "relayed" and row["via"] == pub.peer_id
            assert peer_row(a, b)["path"] == "relayed"
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
        seen = capture.read_bytes()
        assert len(seen) > 50 * 1024 * 1024, "the capture missed the transfer"
        manifest = Manifest.decode((a.home / "blocks" / added["object_id"][:2] / added["object_id"]).read_bytes())
        for _, _, bid in manifest.blocks():
            assert bid not in seen and bid.hex().encode() not in seen, "a block ID crossed the relay in the clear"
        for offset in range(0, len(data) - 64, len(data) // 200):
            assert data[offset : offset + 64] not in seen, "plaintext crossed the relay"
        for marker in (b"peercloud/", b"hello", b"features", a.peer_id.encode(), b.peer_id.encode()):
            assert marker not in seen, f"{marker!r} crossed the relay in the clear"


def test_the_second_relay_takes_over_when_the_first_dies_mid_transfer(tmp_path: Path) -> None:
    with natlab(tmp_path, {1: (1, "symmetric"), 2: (1, "symmetric")}) as lab:
        first = lab.start("pub", "relay1", roles=("directory", "relay"))
        configure(lab, "pub", "relay2", relay=RelaySettings(listen="0.0.0.0:4662"))  # a second relay beside it
        second = lab.start("pub", "relay2", roles=("relay",), port=4660)
        a, b = cloud_of_two(lab, [first, second])
        wait_until(lambda: reserved(b, 2), 30, "b's reservations on both relays")
        src = tmp_path / "big.bin"
        data = random_bytes(128 * 1024 * 1024, seed=64)
        src.write_bytes(data)
        added = a.json("add", str(src), "--class", "replica-1")
        out = tmp_path / "copy.bin"
        via = peer_row(b, a)["via"]
        doomed = first if via == first.peer_id else second
        getter = lab.popen("h2a", b.home, "get", added["read_cap"], "-o", str(out))
        while partial_mib(out) < 16:  # the transfer is under way: 16 of 128 MiB written
            assert getter.poll() is None, "the get ended before the relay could die"
            time.sleep(0.01)
        doomed.proc.kill()
        doomed.proc.wait()
        _, err = getter.communicate(timeout=300)
        assert getter.returncode == 0, err
        assert out.read_bytes() == data
        survivor = second if doomed is first else first
        assert peer_row(b, a)["via"] == survivor.peer_id


def test_behind_cone_nats_the_relayed_link_is_punched_and_outlives_directory_and_relay(tmp_path: Path) -> None:
    with natlab(tmp_path, {1: (1, "cone"), 2: (1, "cone")}) as lab:
        pub = lab.start("pub", "pub", roles=("directory", "relay"))
        a, b = cloud_of_two(lab, [pub])
        wait_until(lambda: peer_row(b, a)["path"] == "punched", 30, "the relayed link to be punched")
        assert logged(b, f"link to {a.peer_id[:13]} up: relayed via {pub.peer_id[:13]}")  # it started relayed
        assert peer_row(a, b)["path"] == "punched" and peer_row(b, a)["via"] is None
        assert str(peer_row(b, a)["address"]).startswith("203.0.113.1:")  # a's NAT, not the relay
        transfer(a, b, tmp_path, 50 * 1024 * 1024, seed=51)
        # The directory and the relay only introduced them: stopped, nothing changes between the two.
        assert pub.stop() == 0
        transfer(a, b, tmp_path, 3 * 1024 * 1024, seed=52)
        assert peer_row(b, a)["path"] == "punched"


def test_a_router_that_maps_by_upnp_makes_the_path_mapped_with_no_relay(tmp_path: Path) -> None:
    with natlab(tmp_path, {1: (1, "upnp"), 2: (1, "cone")}) as lab:
        pub = lab.start("pub", "pub", roles=("directory",))  # it introduces; there is no relay at all
        configure(lab, "h1a", "a", directories=(pub.address,))
        a = lab.start("h1a", "a")
        mapping = f"203.0.113.1:{a.port}"
        wait_until(lambda: a.json("status", "--node")["reachable"]["upnp"]["mapped"] == mapping, 30, "a mapping")
        assert {"kind": "mapped", "address": mapping} in a.json("status", "--node")["reachable"]["candidates"]
        a.cli("cloud", "create", "lab")
        b = lab.start("h2a", "b")
        b.cli("cloud", "join", a.cli("cloud", "invite").stdout.strip().splitlines()[-1])
        wait_until(lambda: peer_row(b, a)["path"] == "mapped", 30, "b to reach a at its mapped port")
        assert peer_row(b, a)["address"] == mapping and peer_row(b, a)["via"] is None
        assert peer_row(a, b)["path"] == "mapped"  # the dialing side's path, told in the hello
        transfer(a, b, tmp_path, 2 * 1024 * 1024, seed=61)
        # Stopped, a takes its mapping off the router.
        assert f"dport {a.port}" in lab.run("r1", "nft", "list", "chain", "inet", "miniupnpd", "prerouting_upnp").stdout
        assert a.stop() == 0
        assert (
            f"dport {a.port}"
            not in lab.run("r1", "nft", "list", "chain", "inet", "miniupnpd", "prerouting_upnp").stdout
        )


def test_members_on_one_lan_find_each_other_by_mdns_with_no_directory(tmp_path: Path) -> None:
    with natlab(tmp_path, {1: (3, "cone")}) as lab:
        a = lab.start("h1a", "a")
        a.cli("cloud", "create", "home")
        b = lab.start("h1b", "b")
        b.cli("cloud", "join", a.cli("cloud", "invite").stdout.strip().splitlines()[-1])
        wait_until(lambda: peer_row(b, a)["path"] == "lan", 30, "b to link to a")
        # A stranger on the same LAN listens to what is advertised.
        stranger = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("h1c"), "tcpdump", "-i", "eth0", "-l", "-A", "-n", "udp", "port", "5353"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            time.sleep(1.0)
            # Both move to other ports: the document, the records and the invite all name old
            # ones, and there is no directory. Only LAN discovery can bring them together again.
            assert a.stop() == 0 and b.stop() == 0
            a2 = lab.start("h1a", "a", port=4651)
            b2 = lab.start("h1b", "b", port=4652)
            wait_until(lambda: peer_row(b2, a2)["path"] == "lan", 30, "mDNS to bring them together")
            assert str(peer_row(a2, b2)["path"]) == "lan"
        finally:
            stranger.terminate()
        heard = stranger.communicate(timeout=10)[0]
        assert "_peercloud._tcp" in heard  # the stranger did hear the advertisements, and in them
        for secret in (a.peer_id, b.peer_id, a.peer_id[5:17], b.peer_id[5:17], "home"):
            assert secret not in heard  # nothing that names the cloud or a peer
