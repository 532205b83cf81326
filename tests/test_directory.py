"""The directory role: it introduces peers that cannot find each other, then gets out of the way."""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from peercloud.connect.record import PeerRecord
from peercloud.identity import Identity
from peercloud.net.link import PeerError
from peercloud.node.config import load_config
from peercloud.wire import messages as m

from .conftest import run_cli
from .daemons import Daemon, connected, wait_for
from .test_cloud import Raw, Start, all_online, invite

FOUND_WITHIN = 30.0


def use_directory(home: Path, directory: Daemon) -> None:
    """Write a directory into a node's config.toml, as a user would."""
    if not (home / "node.key").exists():
        run_cli(home, "init", check=True)
    config = load_config(home / "config.toml")
    replace(config, directories=(directory.address,)).save(home / "config.toml")


def test_directory_introduces_members_that_both_moved_then_is_not_needed(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    directory = daemons("dir", roles=("directory",))
    assert directory.cli("status", "--node").returncode == 0
    use_directory(tmp_path / "a", directory)
    a = daemons("a")
    a.cli("cloud", "create", "lab")
    b = daemons("b")  # configured with nothing: the invite brings the directory
    b.cli("cloud", "join", invite(a))
    assert directory.address in load_config(b.home / "config.toml").directories
    wait_for(lambda: all_online(a, 2) and all_online(b, 2), 20, "both members online")
    wait_for(lambda: connected(b, directory.peer_id), 20, "b to link to the directory")
    wait_for(lambda: b.json("status", "--node")["reachable"]["observed"], 20, "the directory to say where it sees b")
    # Both move to new ports: neither can reach the other where the document or its records say.
    assert a.stop() == 0 and b.stop() == 0
    a2, b2 = daemons("a"), daemons("b")
    wait_for(
        lambda: connected(a2, b2.peer_id) and connected(b2, a2.peer_id), FOUND_WITHIN, "the directory to introduce them"
    )
    # The directory only introduced them: stopped, nothing changes between the two.
    assert directory.stop() == 0
    src = make_file(2_000_000, name="after.bin")
    added = a2.json("add", str(src), "--class", "replica-2")
    out = tmp_path / "back.bin"
    b2.json("get", added["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert connected(a2, b2.peer_id)


def test_directory_refuses_what_it_must(daemons: Start) -> None:
    directory = daemons("dir", roles=("directory",))
    plain = daemons("plain")
    raw = Raw()
    other = Identity.generate()
    try:
        link = raw.connect(directory)
        mine = PeerRecord.sign(raw.identity, 5, [])
        answer = raw.call(link, lambda i: m.Publish(i, mine.raw))
        assert isinstance(answer.message, m.Published) and answer.message.observed.startswith("127.0.0.1:")
        # Someone else's record (validly signed by it) is not the caller's to publish.
        theirs = PeerRecord.sign(other, 9, [])
        refused(raw, link, m.Publish, theirs.raw, "refused")
        # An older record of the caller's own, and a forged one.
        refused(raw, link, m.Publish, PeerRecord.sign(raw.identity, 4, []).raw, "bad_request")
        forged = bytearray(PeerRecord.sign(raw.identity, 6, []).raw)
        forged[-1] ^= 1
        refused(raw, link, m.Publish, bytes(forged), "bad_request")
        # Lookups: the newest record kept, or a typed not_found.
        found = raw.call(link, lambda i: m.Lookup(i, raw.identity.peer_id.public_key))
        assert found.message.record == mine.raw
        refused(raw, link, m.Lookup, other.peer_id.public_key, "not_found")
        # A flood of lookups from one address: busy, and the directory keeps answering others.
        codes = [code_of(raw, link, m.Lookup, other.peer_id.public_key) for _ in range(150)]
        assert codes.count("busy") > 0
        assert directory.cli("status", "--node").returncode == 0
        # A node without the role says so.
        plain_link = raw.connect(plain)
        refused(raw, plain_link, m.Lookup, other.peer_id.public_key, "refused")
    finally:
        raw.close()


def code_of(raw: Raw, link: object, kind: type, value: bytes) -> str:
    try:
        raw.call(link, lambda i: kind(i, value))  # type: ignore[arg-type]
    except PeerError as e:
        return e.code
    return "ok"


def refused(raw: Raw, link: object, kind: type, value: bytes, code: str) -> None:
    assert code_of(raw, link, kind, value) == code


def test_up_refuses_an_unknown_role(home: Path) -> None:
    bad = run_cli(home, "up", "--role", "teleporter")
    assert bad.returncode == 2 and "unknown role" in bad.stderr
