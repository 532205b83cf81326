"""Power cuts under a cloud member's daemon: joining, catalog sync, placement pulls, rebuilds, audits.

The member's home is on crashfs; the other members run on the real disk, restored from the
same pristine copy for every cut so each run starts alike. After the cut the other members
are asked what the cut member had announced: every one of those blocks must be on its disk,
whole and indexed, since a holder that announces what a power cut can take back makes the
cloud count copies that do not exist. Then the member restarts and the cloud heals around it:
it is (or, cut short of its join, becomes again with the same invite) a member, catches the
catalog up and holds what the class gives it.
"""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from peercloud.content.manifest import Manifest
from peercloud.identity import Identity
from peercloud.node.process import start_daemon as launch

from ..conftest import random_bytes
from ..daemons import Daemon, start_daemon
from .checks import CUTS_DEFAULT, bad_blocks, durable_blocks, held_blocks, init_home, member_of_cloud, restart_checks
from .harness import Outcome, power_cuts, power_out

# A run here starts three to four daemons and waits for placement and audits (~15 s): fewer cuts.
CUTS = int(os.environ.get("PEERCLOUD_POWERLOSS_CUTS", CUTS_DEFAULT * 5 // 8))
Act = Callable[[Daemon, dict[str, Daemon]], bool]  # a workload step with the member and the others up
SETTLE = 90.0  # seconds a run may take to place, prove and heal (the cut disk is slow)


def free_port() -> int:
    """A loopback port free now: members' addresses are in the cloud document, so they keep theirs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def invite(admin: Daemon) -> str:
    return admin.cli("cloud", "invite").stdout.strip().splitlines()[-1]


def peer_of(home: Path) -> str:
    return str(Identity.load(home / "node.key").peer_id)


def manifest_of(home: Path, object_id: str) -> Manifest:
    """Read a manifest straight from a stopped node's block files."""
    return Manifest.decode((home / "blocks" / object_id[:2] / object_id).read_bytes())


@contextmanager
def restored(pristine: Path, run: Path, ports: dict[str, int]) -> Iterator[dict[str, Daemon]]:
    """The other members, each from its pristine home (a new one where there is none), on its own
    port; stopped after, whatever happened."""
    started: dict[str, Daemon] = {}
    try:
        for name, port in ports.items():
            if (pristine / name).exists():
                shutil.rmtree(run / name, ignore_errors=True)
                shutil.copytree(pristine / name, run / name)
            started[name] = start_daemon(run / name, port)
        yield started
    finally:
        for d in started.values():
            with suppress(subprocess.TimeoutExpired):
                d.stop(timeout=15)


def until(predicate: Callable[[], bool], mnt: Path | None, timeout: float = SETTLE) -> bool:
    """Poll until `predicate` holds (True), the power goes or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mnt is not None and power_out(mnt):
            return False
        with suppress(Exception):  # a daemon on a dead disk answers with errors: keep polling
            if predicate():
                return True
        time.sleep(0.3)
    return False


def claims(watcher: Daemon, object_id: str, peer_id: str) -> tuple[set[int], set[int]]:
    """(announced, proved) block indexes of one holder, as a member sees them."""
    for h in watcher.json("status", object_id)["holders"]:
        if h["peer_id"] == peer_id:
            return set(h["blocks"]), set(h["confirmed"])
    return set(), set()


def catalog_size(d: Any) -> int:
    return sum(d.json("status")["counts"].values())


class Member:
    """The member whose home is on the cut disk, and what its peers heard from it."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.port = port
        self.log = open(tmp_path / "member.log", "ab")  # noqa: SIM115 - closed by the scenario
        self.announced: set[bytes] = set()  # blocks it announced, by the watcher's word, at the cut

    @contextmanager
    def running(self, home: Path) -> Iterator[Daemon | None]:
        """The member's daemon on the mount (None when the power went before it was up)."""
        try:
            d = launch(home, log=self.log, verbose=True, port=self.port)  # type: ignore[arg-type]
        except (RuntimeError, OSError):
            yield None
            return
        try:
            yield Daemon(d.home, d.proc, d.state)
        finally:
            with suppress(subprocess.TimeoutExpired):
                d.stop(timeout=10)

    def session(
        self, mnt: Path, homes: tuple[Path, Path, dict[str, int]], manifest: Manifest, me: str, act: Act
    ) -> bool:
        """The member on the cut disk beside the others (restored from `homes`): `act` is the workload;
        afterwards, with the member stopped, what the admin heard it announce is kept for the check."""
        pristine, run, ports = homes
        with restored(pristine, run, ports) as others, self.running(mnt / "home") as d:
            try:
                return d is not None and act(d, others)
            finally:
                if d is not None:
                    with suppress(subprocess.TimeoutExpired):
                        d.stop(timeout=10)
                self.heard(others["admin"], manifest, me)

    def heard(self, watcher: Daemon, manifest: Manifest, peer_id: str) -> None:
        """Remember what the watcher believes the member holds (after the member stopped)."""
        announced, _ = claims(watcher, manifest.object_id.hex(), peer_id)
        blocks = manifest.blocks()
        self.announced = {blocks[i][2] for i in announced}

    def check_durable(self, home: Path, manifest: Manifest, finished: bool) -> None:
        """What it announced is on its disk; after a finished run it holds its share of the object."""
        assert not bad_blocks(home), "the index names blocks the disk does not have whole"
        have = durable_blocks(home)
        lost = self.announced - have
        assert not lost, f"{len(lost)} block(s) announced to the cloud are gone after the cut"
        if finished:
            assert self.announced, "a finished run announced nothing"
            assert self.announced <= held_blocks(home, manifest.object_id), "blocks it announced are not held"


def scenario_join(tmp_path: Path, cuts: int) -> None:
    """A new member joins, catches the catalog up and pulls the copy its class places on it."""
    pristine, run = tmp_path / "pristine", tmp_path / "run"
    ports = {"admin": free_port()}
    with restored(tmp_path, pristine, ports) as started:  # the admin's pristine home, made here
        admin = started["admin"]
        admin.cli("cloud", "create", "lab", "--offer", "10GiB")
        for i in range(12):  # a catalog to catch up on, held by the admin alone
            small = tmp_path / f"small-{i}.bin"
            small.write_bytes(random_bytes(1000 + i, seed=100 + i))
            admin.cli("add", str(small), "--class", "replica-1")
        src = tmp_path / "shared.bin"
        src.write_bytes(random_bytes(3 * 1024 * 1024 + 11, seed=21))
        big = admin.json("add", str(src), "--class", "replica-2")["object_id"]  # the joiner's copy
        token = invite(admin)
    manifest = manifest_of(pristine / "admin", big)
    init_home(pristine)  # the joiner: pristine/home, on the cut disk in every run
    me = peer_of(pristine / "home")
    member = Member(tmp_path, free_port())

    def settled(d: Daemon, watcher: Daemon) -> bool:
        _, proved = claims(watcher, big, me)
        return len(proved) == len(manifest.blocks()) and catalog_size(d) == 13

    def workload(mnt: Path) -> bool:
        def act(d: Daemon, others: dict[str, Daemon]) -> bool:
            joined = d.cli("cloud", "join", token, "--offer", "1GiB", check=False).returncode == 0
            return joined and until(lambda: settled(d, others["admin"]), mnt)

        return member.session(mnt, (pristine, run, ports), manifest, me, act)

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        member.check_durable(home, manifest, outcome.finished)
        if outcome.finished:
            assert member_of_cloud(home, me), "a join that succeeded is gone after the cut"
        restart_checks(home, {}, set(), tmp_path)
        # The cloud heals: the member rejoins if it must (its invite still takes it) and settles.
        with restored(run, run / "again", ports) as others, member.running(home) as d:
            assert d is not None
            if not member_of_cloud(home, me):
                d.cli("cloud", "join", token, "--offer", "1GiB")
            assert until(lambda: settled(d, others["admin"]), None), "the member did not settle after the cut"

    try:
        power_cuts(pristine, run, workload, check, cuts, seed=15, torn=0.5)
    finally:
        member.log.close()


def scenario_rebuild(tmp_path: Path, cuts: int) -> None:
    """A member rebuilds an erasure-coded column whose only holder is gone (decode, re-encode, drop helpers)."""
    pristine, run = tmp_path / "pristine", tmp_path / "run"
    names = ("admin", "b", "d", "e")
    ports = {n: free_port() for n in names}
    member = Member(tmp_path, free_port())
    init_home(pristine)
    me = peer_of(pristine / "home")
    with restored(tmp_path, pristine, ports) as daemons:
        admin = daemons["admin"]
        # Columns are 2 MiB: the owner offers no room for one and the others room for one each, so
        # the lost column can only go to the member on the cut disk.
        admin.cli("cloud", "create", "lab", "--offer", "1MiB")
        admin.cli("class", "add", "fast-ec", "--ec", "2+1", "--grace", "1s", "--force")  # members join next
        for n in ("b", "d", "e"):
            daemons[n].cli("cloud", "join", invite(admin), "--offer", "3MiB")
        with member.running(pristine / "home") as c:  # joins, then stays away while the object is placed
            assert c is not None
            c.cli("cloud", "join", invite(admin), "--offer", "10GiB")
        src = tmp_path / "coded.bin"
        src.write_bytes(random_bytes(3 * 1024 * 1024 + 5, seed=22))
        oid = admin.json("add", str(src), "--class", "fast-ec")["object_id"]
        manifest = manifest_of(pristine / "admin", oid)
        column = {manifest.segment_count}

        def one_each() -> bool:
            return all({len(c) for c in claims(admin, oid, daemons[n].peer_id)} == column for n in ("b", "d", "e"))

        assert until(one_each, None), "ec-2+1 did not settle with one column on each of three members"
        lost = claims(admin, oid, daemons["d"].peer_id)[1]
    ports.pop("d")  # the holder that never comes back: its column has no other holder

    def column_rebuilt(watcher: Daemon) -> bool:
        """The member holds the lost column, proved (it may still hold the helper shares it decoded from)."""
        return lost <= claims(watcher, oid, me)[1]

    def settled(watcher: Daemon) -> bool:
        """The column is rebuilt and the helper shares dropped again: the member holds just that column."""
        return claims(watcher, oid, me)[1] == lost

    def workload(mnt: Path) -> bool:
        act = lambda d, others: until(lambda: settled(others["admin"]), mnt)  # noqa: E731
        return member.session(mnt, (pristine, run, ports), manifest, me, act)

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        member.check_durable(home, manifest, outcome.finished)
        assert member_of_cloud(home, me)
        restart_checks(home, {}, set(), tmp_path)
        with restored(run, run / "again", ports) as others, member.running(home):
            assert until(lambda: column_rebuilt(others["admin"]), None), "the column was not rebuilt after the cut"

    try:
        power_cuts(pristine, run, workload, check, cuts, seed=16, torn=0.5)
    finally:
        member.log.close()


def test_power_cut_while_joining_a_cloud_and_pulling_a_copy(tmp_path: Path) -> None:
    scenario_join(tmp_path, CUTS)


def test_power_cut_while_rebuilding_a_lost_column(tmp_path: Path) -> None:
    scenario_rebuild(tmp_path, CUTS)
