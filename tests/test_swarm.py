"""Fetchers of one object serve each other what they already wrote (blocks re-created from their
partial files and checked against their IDs): real daemons on loopback."""

import itertools
from collections.abc import Callable
from pathlib import Path

from .conftest import run_cli_async
from .daemons import Daemon, block_files, connected, partial_mib, wait_for
from .test_daemon import FakePeer, link


def bytes_between(d: Daemon, others: list[Daemon]) -> int:
    """Bytes `d` received from any of `others`."""
    ids = {o.peer_id for o in others}
    return sum(int(p["bytes_in"]) for p in d.json("peers") if p["peer_id"] in ids)


def test_four_fetchers_share_and_three_finish_when_one_is_killed(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    seeder = daemons("seeder")
    src = make_file(160 * 1024 * 1024, name="film.bin")
    added = seeder.json("add", str(src), "--class", "replica-1")
    fetchers = [daemons(f"f{i}") for i in range(4)]
    for f in fetchers:
        link(f, seeder)
    for f, g in itertools.combinations(fetchers, 2):
        link(f, g)
    outs = [tmp_path / f"out{i}.bin" for i in range(4)]
    gets = [run_cli_async(f.home, "get", added["read_cap"], "-o", str(o)) for f, o in zip(fetchers, outs, strict=True)]
    wait_for(lambda: partial_mib(outs[3]) >= 30 or gets[3].poll() is not None, 60, "the fourth get to be under way")
    fetchers[3].kill()  # one fetcher dies mid-way: those fetching from it go elsewhere
    for get, out in zip(gets[:3], outs[:3], strict=True):
        assert get.wait(timeout=180) == 0, get.stderr.read() if get.stderr else ""
        assert out.read_bytes() == src.read_bytes()
    live = fetchers[:3]
    shared = sum(bytes_between(f, [g for g in live if g is not f]) for f in live)
    assert shared > 0, "no fetcher fetched anything from another one"
    for f in live:
        assert block_files(f.home) == 1, "a fetcher stored blocks (the manifest only is kept)"
        assert f.cli("fsck").returncode == 0
    # Once done, they no longer claim what they served meanwhile.
    wait_for(
        lambda: all(
            h["peer_id"] not in {f.peer_id for f in live} or not h["blocks"]
            for h in seeder.json("status", added["object_id"])["holders"]
        ),
        30,
        "finished fetchers to withdraw their claims",
    )


def test_a_block_a_liar_sent_one_fetcher_never_reaches_another(
    daemons: Callable[[str], Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    seeder, first, second = daemons("seeder"), daemons("first"), daemons("second")
    src = make_file(64 * 1024 * 1024, name="doc.bin")
    added = seeder.json("add", str(src), "--class", "replica-1")
    liar = FakePeer(bytes.fromhex(added["object_id"]), added["blocks"] - 1)
    try:
        first.cli("peers", "add", liar.address)  # only the first fetcher hears the liar
        wait_for(lambda: connected(first, str(liar.identity.peer_id)), what="liar to connect")
        link(first, seeder)
        link(second, seeder)
        link(first, second)
        out1, out2 = tmp_path / "one.bin", tmp_path / "two.bin"
        g1 = run_cli_async(first.home, "get", added["read_cap"], "-o", str(out1))
        g2 = run_cli_async(second.home, "get", added["read_cap"], "-o", str(out2))
        for get in (g1, g2):
            assert get.wait(timeout=180) == 0, get.stderr.read() if get.stderr else ""
        assert out1.read_bytes() == src.read_bytes()
        assert out2.read_bytes() == src.read_bytes()  # whatever it took from the first was verified
        assert liar.served >= 1
        row = next(p for p in first.json("peers") if p["peer_id"] == str(liar.identity.peer_id))
        assert row["banned"] is True
    finally:
        liar.close()
