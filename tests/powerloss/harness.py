"""Power cuts for tests: run a workload on crashfs, cut it at chosen operations, check what is left.

A scenario is a pristine backing folder (prepared on the real disk, so all of it is durable)
and a workload (commands run with their files on the mount). A dry run counts the mutating
operations T the workload makes; then for each cut point N (seeded picks in 1..T) a copy of
the pristine folder is mounted with the cut at N, the workload runs into the dead disk, its
processes are killed, the mount goes (and with it everything not synced), and a fresh mount of
what reached the backing folder is handed to the checks. Unmounting after a complete run is a
power cut too: right after the workload ended, with nothing more synced.
"""

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stats:
    """What a mount counted: mutating operations, and whether the power was cut."""

    ops: int
    cut: bool


@contextlib.contextmanager
def mounted(backing: Path, mountpoint: Path, cut_at: int = 0, torn: float = 0.0, seed: int = 0) -> Iterator[Path]:
    """Mount crashfs over `backing` at `mountpoint` for the block; unmounting forgets what was not synced.

    The stats of the mount are written to `mountpoint` + ".stats.json" at unmount (see `stats`).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    stats = _stats_path(mountpoint)
    stats.unlink(missing_ok=True)
    _cut_path(mountpoint).unlink(missing_ok=True)
    args = [sys.executable, "-m", "tests.powerloss.crashfs", str(backing), str(mountpoint), "--stats", str(stats)]
    args += ["--on-cut", str(_cut_path(mountpoint))]
    args += ["--cut-at", str(cut_at), "--torn", str(torn), "--seed", str(seed)]
    log = open(mountpoint.with_name(mountpoint.name + ".log"), "ab")  # noqa: SIM115 - kept for the process's life
    proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"crashfs did not mount (exit {proc.poll()}); see {log.name}")
            time.sleep(0.02)
        yield mountpoint
    finally:
        _unmount(mountpoint, proc)
        log.close()


def _stats_path(mountpoint: Path) -> Path:
    return mountpoint.with_name(mountpoint.name + ".stats.json")


def _cut_path(mountpoint: Path) -> Path:
    return mountpoint.with_name(mountpoint.name + ".cut")


def power_out(mountpoint: Path) -> bool:
    """True once the power of the mount at `mountpoint` was cut: a workload stops waiting then."""
    return _cut_path(mountpoint).exists()


def stats(mountpoint: Path) -> Stats:
    """The statistics of the last mount at `mountpoint`, once unmounted."""
    data = json.loads(_stats_path(mountpoint).read_text())
    return Stats(int(data["ops"]), bool(data["cut"]))


def _unmount(mountpoint: Path, proc: subprocess.Popen[bytes]) -> None:
    for attempt in range(50):
        if proc.poll() is not None:
            break
        result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if result.returncode == 0:
            break
        time.sleep(0.1 if attempt < 40 else 0.5)  # a process that had files open is still exiting
    else:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def cut_points(total: int, count: int, seed: int, after: int = 0) -> list[int]:
    """`count` distinct operation numbers in after+1..total, reproducible from `seed`, in order."""
    picks = random.Random(seed).sample(range(after + 1, total + 1), min(count, max(0, total - after)))
    return sorted(picks)


class DurabilityLost(AssertionError):
    """A check failed after a power cut: what the node had said it kept is not all there."""

    def __init__(self, outcome: "Outcome", why: BaseException) -> None:
        super().__init__(f"after a power cut at operation {outcome.cut_at or 'end'} of {outcome.ops}: {why!r}")
        self.outcome = outcome


@dataclass
class Outcome:
    """One run of a workload: where the power went, and whether the workload finished first."""

    cut_at: int
    finished: bool
    ops: int


Workload = Callable[[Path], bool]  # runs on the mount; True when it finished (its commands succeeded)
Check = Callable[[Path, Outcome], None]  # inspects the mount after the cut and a remount


def power_cuts(
    pristine: Path,
    work: Path,
    workload: Workload,
    check: Check,
    cuts: int,
    seed: int,
    torn: float = 0.0,
    lead_in: Workload | None = None,
) -> list[Outcome]:
    """Run `workload` once whole and once per cut point; after each, remount and `check` what is left.

    `lead_in` is the workload up to the moment under test (its processes killed there, so they
    make no more operations): run once first, it counts the operations before that moment, and
    the cut points are picked among those after it.
    """
    first = _lead_in(pristine, work, lead_in) if lead_in is not None else 0
    outcomes = [_one(pristine, work, workload, check, 0, seed, torn)]  # whole: it counts the operations
    total = outcomes[0].ops
    for cut_at in cut_points(total, cuts, seed, after=min(first, max(0, total - cuts))):
        outcomes.append(_one(pristine, work, workload, check, cut_at, seed + cut_at, torn))
    return outcomes


def _lead_in(pristine: Path, work: Path, lead_in: Workload) -> int:
    backing, mountpoint = work / "backing", work / "mnt"
    shutil.rmtree(backing, ignore_errors=True)
    shutil.copytree(pristine, backing, symlinks=True)
    with mounted(backing, mountpoint) as mnt:
        assert lead_in(mnt), "the lead-in did not reach the moment under test"
    ops = stats(mountpoint).ops
    print(f"{ops} operations before the moment under test: the cuts come after")
    return ops


def _one(pristine: Path, work: Path, workload: Workload, check: Check, cut_at: int, seed: int, torn: float) -> Outcome:
    backing, mountpoint = work / "backing", work / "mnt"
    shutil.rmtree(backing, ignore_errors=True)
    shutil.copytree(pristine, backing, symlinks=True)
    with mounted(backing, mountpoint, cut_at, torn, seed) as mnt:
        finished = workload(mnt)
    counted = stats(mountpoint)
    outcome = Outcome(cut_at, finished and not counted.cut, counted.ops)
    state = "finished" if outcome.finished else "cut"
    print(f"power cut at operation {cut_at or 'end'} of {counted.ops}: workload {state}")
    with mounted(backing, mountpoint) as mnt:  # the machine comes back up
        try:
            check(mnt, outcome)
        except Exception as e:
            raise DurabilityLost(outcome, e) from e
    return outcome
