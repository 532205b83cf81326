"""Shutdown: real daemons stop within 5 s of SIGINT/SIGTERM, whatever they are doing; the CLI is quiet on Ctrl-C."""

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peercloud.identity import Identity

from .conftest import CLI_ENV, run_cli_async
from .daemons import Daemon, block_files, start_daemon, wait_for
from .test_cloud import make_cloud

STOP_WITHIN = 5.0


def closed_port() -> int:
    """A loopback port nothing listens on: dials to it are refused, and redialed with backoff."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts TCP (the kernel's backlog) but never speaks: a dial hangs in its handshake."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def sparse_file(path: Path, size: int = 8 << 30) -> Path:
    """A large file that costs no disk to make: its add runs for a long while (each segment encrypts)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def stranger(port: int) -> str:
    """PEERID@127.0.0.1:PORT for a peer that does not exist."""
    return f"{Identity.generate().peer_id}@127.0.0.1:{port}"


def signal_all(procs: list[Daemon], sig: int) -> list[tuple[int | None, float]]:
    """Send `sig` to every daemon at once; (exit code or None, seconds to exit) for each."""
    for d in procs:
        d.proc.send_signal(sig)
    sent = time.monotonic()
    exits: dict[int, tuple[int | None, float]] = {}
    while len(exits) < len(procs) and time.monotonic() - sent < STOP_WITHIN + 10:
        for i, d in enumerate(procs):
            if i not in exits and d.proc.poll() is not None:
                exits[i] = (d.proc.returncode, time.monotonic() - sent)
        time.sleep(0.01)
    return [exits.get(i, (None, time.monotonic() - sent)) for i in range(len(procs))]


def add_in_flight(d: Daemon, path: Path) -> "subprocess.Popen[str]":
    """Start `peercloud add` through the daemon and return once the daemon is writing its blocks."""
    adding = run_cli_async(d.home, "add", str(path))
    # Placement may bring a few dozen blocks too; this many come only from the add itself.
    wait_for(lambda: block_files(d.home) > 80 or adding.poll() is not None, what="the add to write blocks")
    assert adding.poll() is None, adding.communicate()
    return adding


def cut_short(adding: "subprocess.Popen[str]") -> str:
    """The add ended with the daemon, saying so in one line (it was served by the daemon, not locally)."""
    try:
        _, err = adding.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        adding.kill()
        adding.wait()
        raise AssertionError("the add kept running after its daemon stopped") from None
    assert adding.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@contextlib.contextmanager
def busy_cloud(
    daemons: Callable[..., Daemon], make_file: Callable[..., Path]
) -> Iterator[tuple[list[Daemon], "subprocess.Popen[str]"]]:
    """Four members, one redialing a dead address, one stuck dialing a silent one, transfers and an add running."""
    cloud = make_cloud(daemons, 4)
    with black_hole() as silent:
        cloud[0].cli("peers", "add", stranger(closed_port()))
        cloud[1].cli("peers", "add", stranger(silent))
        placed = make_file(24_000_000, name="placed.bin", seed=3)
        cloud[3].cli("add", str(placed), "--class", "replica-3")  # returns at once; placement transfers follow
        adding = add_in_flight(cloud[2], sparse_file(cloud[2].home.parent / "big.bin"))  # an API stream, threads busy
        try:
            yield cloud, adding
        finally:
            if adding.poll() is None:
                adding.kill()
                adding.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_four_busy_daemons_stop_within_5s(
    daemons: Callable[..., Daemon], make_file: Callable[..., Path], sig: signal.Signals
) -> None:
    with busy_cloud(daemons, make_file) as (cloud, adding):
        exits = signal_all(cloud, sig)
        report = {d.home.name: (code, round(t, 2)) for d, (code, t) in zip(cloud, exits, strict=True)}
        for d, (code, took) in zip(cloud, exits, strict=True):
            assert code == 0 and took <= STOP_WITHIN, (report, (d.home / "daemon.log").read_text()[-3000:])
            assert not (d.home / "daemon.json").exists()
        cut_short(adding)


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "solo")
    d.cli("peers", "add", stranger(closed_port()))
    adding = add_in_flight(d, sparse_file(tmp_path / "big.bin"))
    try:
        d.proc.send_signal(signal.SIGTERM)  # the add's stream holds the API for its grace period
        time.sleep(0.05)
        d.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = d.proc.wait(timeout=STOP_WITHIN + 10)
        assert time.monotonic() - sent < 0.5
        assert code == 128 + signal.SIGTERM
        cut_short(adding)
    finally:
        for proc in (d.proc, adding):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stopping_mid_add_leaves_a_clean_store_and_a_one_line_error(tmp_path: Path) -> None:
    """The add in flight fails with one line; its leftovers are what a crash leaves, and fsck finds no damage."""
    d = start_daemon(tmp_path / "solo")
    adding = add_in_flight(d, sparse_file(tmp_path / "big.bin"))
    sent = time.monotonic()
    assert d.stop(timeout=STOP_WITHIN + 10) == 0
    assert time.monotonic() - sent <= STOP_WITHIN
    cut_short(adding)
    fsck = subprocess.run(
        [sys.executable, "-m", "peercloud", "--home", str(d.home), "fsck"], capture_output=True, text=True, env=CLI_ENV
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    again = start_daemon(d.home)  # and the node starts again on it
    assert again.stop(timeout=STOP_WITHIN + 10) == 0


def importing(pid: int) -> bool:
    """True once the interpreter maps an extension module: Python's own start-up (site) is over.

    A SIGINT before that hits Python itself ("Fatal Python error: init_import_site"), before any
    peercloud code can run; the delays below count from here.
    """
    try:
        return "lib-dynload" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("delay_ms", [0, 10, 30, 50, 80, 120, 160, 200, 250, 300])
@pytest.mark.parametrize("entry", ["python -m peercloud", "peercloud"])
def test_ctrl_c_while_the_cli_starts_prints_no_traceback(home: Path, delay_ms: int, entry: str) -> None:
    script = Path(sys.executable).parent / "peercloud"  # the console script pip made: imports cli.app first
    if entry == "peercloud" and not script.exists():
        pytest.skip("no console script next to this interpreter")
    command = [sys.executable, "-m", "peercloud"] if entry != "peercloud" else [sys.executable, str(script)]
    proc = subprocess.Popen(
        [*command, "--home", str(home), "ls"],
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 5
    while not importing(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay_ms / 1000)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 1, err
    # 130, or killed by SIGINT as CPython ends when a Ctrl-C lands while it winds down (shells
    # report both as 130); 0: it finished before the signal.
    assert proc.returncode in (130, -signal.SIGINT, 0), (proc.returncode, err)
