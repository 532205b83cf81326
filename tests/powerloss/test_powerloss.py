"""Power cuts on crashfs: after each cut and a restart, nothing the node says it has is missing.

Each scenario runs a real command (`peercloud init`, `add`, `get`, `fsck`, and `pin` through a
daemon whose home is on the cut disk) with the node home on crashfs, cuts the power at seeded
operation numbers (plus once right after the command ended), remounts what reached the disk
and checks: every block the index names is whole, `fsck` is
clean, every listed object reads back identical, what a command that succeeded wrote is there,
and the daemon starts. `PEERCLOUD_POWERLOSS_CUTS` sets the cuts per scenario (default 8).

`test_every_sync_site_is_needed` runs the scenarios again with one fsync, directory fsync or
SQLite setting taken out (`mutant.py`): each must make a check fail.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from peercloud.content.manifest import Manifest
from peercloud.identity import Identity
from peercloud.node.home import NodeHome
from peercloud.node.local import LocalNode
from peercloud.node.process import start_daemon as launch

from ..conftest import random_bytes
from ..daemons import journalled, start_daemon
from .checks import CUTS_DEFAULT, bad_blocks, cli, init_home, restart_checks
from .harness import DurabilityLost, Outcome, power_cuts
from .mutant import SITES

CUTS = int(os.environ.get("PEERCLOUD_POWERLOSS_CUTS", CUTS_DEFAULT))
Scenario = Callable[[Path, str | None, int], None]  # (tmp_path, mutated site or None, cuts)


def scenario_init(tmp_path: Path, site: str | None, cuts: int) -> None:
    """`peercloud init`: once it said done, the home is complete; cut short, init again works."""
    pristine = tmp_path / "pristine"
    pristine.mkdir()

    def workload(mnt: Path) -> bool:
        return cli(mnt / "home", "init", site=site).returncode == 0

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        if not outcome.finished:
            assert cli(home, "init").returncode == 0, "init cannot finish after a cut"
        Identity.load(home / "node.key")
        assert (home / "config.toml").exists(), "config.toml is gone"
        tomllib.loads((home / "config.toml").read_text())
        assert len((home / "convergence.secret").read_bytes()) == 32, "the convergence secret is not whole"
        assert (home / "api.token").read_text().strip(), "the API token is empty"
        assert all((home / d).is_dir() for d in ("blocks", "tmp", "quarantine")), "a store folder is gone"
        assert start_daemon(home).stop() == 0

    power_cuts(pristine, tmp_path / "run", workload, check, cuts, seed=10)


def scenario_add(tmp_path: Path, site: str | None, cuts: int, cls: str = "replica-1", torn: float = 0.0) -> None:
    """`peercloud add`: a visible object is whole; one the command reported added is there."""
    src = tmp_path / "photo.bin"
    data = random_bytes(5 * 1024 * 1024 + 123, seed=7)
    src.write_bytes(data)
    pristine = init_home(tmp_path / "pristine")

    def workload(mnt: Path) -> bool:
        return cli(mnt / "home", "add", str(src), "--class", cls, site=site).returncode == 0

    def check(mnt: Path, outcome: Outcome) -> None:
        restart_checks(mnt / "home", {"photo.bin": data}, {"photo.bin"} if outcome.finished else set(), tmp_path)

    outcomes = power_cuts(pristine, tmp_path / "run", workload, check, cuts, seed=11, torn=torn)
    assert outcomes[0].finished and outcomes[0].ops > 50
    assert cuts == 0 or any(not o.finished for o in outcomes[1:])  # the cuts did interrupt it


def scenario_get(tmp_path: Path, site: str | None, cuts: int) -> None:
    """`peercloud get -o`: the output is whole or absent, never partial; after success it is there."""
    src = tmp_path / "movie.bin"
    data = random_bytes(3 * 1024 * 1024 + 5, seed=3)
    src.write_bytes(data)
    pristine = init_home(tmp_path / "pristine")
    added = json.loads(cli(pristine / "home", "add", str(src), "--json").stdout)
    (pristine / "out").mkdir()

    def workload(mnt: Path) -> bool:
        out = mnt / "out" / "movie.bin"
        return cli(mnt / "home", "get", added["read_cap"], "-o", str(out), site=site).returncode == 0

    def check(mnt: Path, outcome: Outcome) -> None:
        out = mnt / "out" / "movie.bin"
        if outcome.finished:
            assert out.exists() and out.read_bytes() == data, "a get that succeeded left no whole file"
        else:
            assert not out.exists() or out.read_bytes() == data, "a partial file under the final name"
        restart_checks(mnt / "home", {"movie.bin": data}, {"movie.bin"}, tmp_path)

    assert power_cuts(pristine, tmp_path / "run", workload, check, cuts, seed=12)[0].finished


def scenario_get_resume(tmp_path: Path, site: str | None, cuts: int) -> None:
    """A `get` that fails part-way keeps the segments it verified, as it says; after a power cut
    they are still there, and the next get resumes from them without trusting data the cut took."""
    src = tmp_path / "movie.bin"
    data = random_bytes(4 * 1024 * 1024 + 5, seed=4)  # 5 segments of 1 MiB
    src.write_bytes(data)
    pristine = init_home(tmp_path / "pristine")
    home = pristine / "home"
    added = json.loads(cli(home, "add", str(src), "--class", "replica-1", "--json").stdout)
    manifest = Manifest.decode((home / "blocks" / added["object_id"][:2] / added["object_id"]).read_bytes())
    last = manifest.block(manifest.segment_count - 1, 0).hex()
    where = Path("blocks") / last[:2] / last
    aside = tmp_path / "aside.bin"
    shutil.move(home / where, aside)  # the last segment's block is gone: the get fails there
    (pristine / "out").mkdir()
    said: list[int] = []

    def workload(mnt: Path) -> bool:
        proc = cli(mnt / "home", "get", added["read_cap"], "-o", str(mnt / "out" / "movie.bin"), site=site)
        kept = re.search(r"; (\d+) of \d+ segments .* are verified and kept", proc.stderr)
        said[:] = [int(kept[1])] if kept else []
        return proc.returncode != 0 and kept is not None  # failed where it must, saying what it kept

    def check(mnt: Path, outcome: Outcome) -> None:
        out = mnt / "out" / "movie.bin"
        assert not out.exists(), "a get that failed left a file under the final name"
        if outcome.finished:
            assert said[0] >= 1 and journalled(out) >= said[0], "segments a failed get said it kept are gone"
        shutil.copy(aside, mnt / "home" / where)  # the block is back: the next get can finish
        proc = cli(mnt / "home", "get", added["read_cap"], "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == data, "a resumed get wrote data the power cut took back"
        assert not list(out.parent.glob(".movie.bin.*")), "the partial file or journal outlived the get"
        restart_checks(mnt / "home", {"movie.bin": data}, {"movie.bin"}, tmp_path)

    assert power_cuts(pristine, tmp_path / "run", workload, check, cuts, seed=13)[0].finished


def scenario_fsck(tmp_path: Path, site: str | None, cuts: int) -> None:
    """`peercloud fsck` quarantining a rotten block: cut short, the next fsck finishes the job."""
    src = tmp_path / "doc.bin"
    src.write_bytes(random_bytes(2 * 1024 * 1024, seed=5))
    pristine = init_home(tmp_path / "pristine")
    home = pristine / "home"
    assert cli(home, "add", str(src), "--class", "replica-1").returncode == 0
    victim = next(p for p in sorted((home / "blocks").rglob("*")) if p.is_file() and p.stat().st_size > 1000)
    victim.write_bytes(b"\0" * victim.stat().st_size)  # bit rot: fsck must quarantine it
    (home / "tmp" / "leftover.tmp").write_bytes(b"x" * 100)

    def workload(mnt: Path) -> bool:
        return cli(mnt / "home", "fsck", site=site).returncode == 1  # damage found and quarantined

    def check(mnt: Path, outcome: Outcome) -> None:
        h = mnt / "home"
        if outcome.finished:
            kept = h / "quarantine" / victim.name
            assert kept.exists() and kept.stat().st_size == victim.stat().st_size, "the quarantined block is gone"
        assert set(bad_blocks(h)) <= {victim.name}
        with LocalNode(NodeHome(h)) as node:
            first = node.fsck()  # finishes what the cut interrupted
            assert {b.hex() for b in first.corrupt + first.missing} <= {victim.name}
            second = node.fsck()
            assert not second.corrupt and not second.missing
        assert not bad_blocks(h)
        assert start_daemon(h).stop() == 0

    power_cuts(pristine, tmp_path / "run", workload, check, cuts, seed=13)


def scenario_pin(tmp_path: Path, site: str | None, cuts: int) -> None:
    """A daemon on the cut disk pins an object from a peer (swarm fetch, HAVE rows, its peers table)."""
    src = tmp_path / "album.bin"
    data = random_bytes(3 * 1024 * 1024 + 77, seed=9)
    src.write_bytes(data)
    pristine = init_home(tmp_path / "pristine")
    seeder_home = tmp_path / "seeder"
    assert cli(seeder_home, "init").returncode == 0
    added = json.loads(cli(seeder_home, "add", str(src), "--json").stdout)
    name = added["object_id"][:12]  # a pinned object is listed under its ID
    seeder = launch(seeder_home, log=open(tmp_path / "seeder.log", "ab"), verbose=True)  # noqa: SIM115
    log = open(tmp_path / "pinner.log", "ab")  # noqa: SIM115 - the daemons' output, off the cut disk

    def workload(mnt: Path) -> bool:
        home = mnt / "home"
        try:
            pinner = launch(home, log=log, verbose=True)
        except (RuntimeError, OSError):
            return False  # the power went before it was up
        try:
            return (
                cli(home, "peers", "add", seeder.address).returncode == 0
                and cli(home, "pin", added["read_cap"]).returncode == 0
            )
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                pinner.stop(timeout=10)

    def check(mnt: Path, outcome: Outcome) -> None:
        restart_checks(mnt / "home", {name: data}, {name} if outcome.finished else set(), tmp_path)

    try:
        assert power_cuts(pristine, tmp_path / "run", workload, check, cuts, seed=14)[0].finished
    finally:
        seeder.stop()
        log.close()


def test_power_cut_during_init(tmp_path: Path) -> None:
    scenario_init(tmp_path, None, CUTS)


# The erasure-coded add also tears: at each cut half the unsynced pages of files on disk land.
@pytest.mark.parametrize(("cls", "torn"), [("replica-1", 0.0), ("ec-2+1", 0.5)])
def test_power_cut_during_add(tmp_path: Path, cls: str, torn: float) -> None:
    scenario_add(tmp_path, None, CUTS, cls, torn)


def test_power_cut_during_get(tmp_path: Path) -> None:
    scenario_get(tmp_path, None, CUTS)


def test_power_cut_during_a_get_that_resumes(tmp_path: Path) -> None:
    scenario_get_resume(tmp_path, None, CUTS)


def test_power_cut_during_pin_from_a_peer(tmp_path: Path) -> None:
    scenario_pin(tmp_path, None, CUTS)


def test_power_cut_during_fsck_that_quarantines(tmp_path: Path) -> None:
    scenario_fsck(tmp_path, None, CUTS)


# Which scenario depends on each durability call (mutant.SITES lists them all).
CATCHES: dict[str, Scenario] = {
    "block-data": scenario_add,
    "block-shard-dir": scenario_add,
    "block-commit-dirs": scenario_add,
    "sqlite-full": scenario_add,
    "quarantine-dir": scenario_fsck,
    "output-data": scenario_get,
    "output-dir": scenario_get,
    "partial-data": scenario_get_resume,
    "partial-journal": scenario_get_resume,
    "partial-names": scenario_get_resume,
    "key-data": scenario_init,
    "key-dir": scenario_init,
    "atomic-data": scenario_init,
    "home-parent": scenario_init,
}


def test_every_sync_site_has_a_scenario() -> None:
    assert set(CATCHES) == set(SITES)


@pytest.mark.parametrize("site", sorted(SITES))
def test_every_sync_site_is_needed(tmp_path: Path, site: str) -> None:
    # The power goes right after the command succeeded: without this one call, what it said it
    # made durable is not all there.
    with pytest.raises(DurabilityLost) as lost:
        CATCHES[site](tmp_path, site, 0)
    assert lost.value.outcome.finished  # the command succeeded, and yet
