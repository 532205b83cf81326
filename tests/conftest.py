import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .daemons import Daemon

CLI_ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
CLI_ENV.pop("PEERCLOUD_HOME", None)


def run_cli(home: Path, *args: str, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `peercloud` CLI in a subprocess against a node home."""
    proc = subprocess.run(
        [sys.executable, "-m", "peercloud", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        cwd=cwd,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"peercloud {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli_async(home: Path, *args: str) -> subprocess.Popen[str]:
    """Start the real CLI without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "peercloud", "--home", str(home), *args],
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def random_bytes(size: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    chunk = 16 * 1024 * 1024
    return b"".join(rng.randbytes(min(chunk, size - i)) for i in range(0, size, chunk))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "node"
    run_cli(h, "init", check=True)
    return h


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    def make(size: int, name: str = "data.bin", seed: int = 1) -> Path:
        p = tmp_path / name
        p.write_bytes(random_bytes(size, seed))
        return p

    return make


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., "Daemon"]]:
    """Start real daemons by name (optionally on a given peer port); all are stopped, and checked, after."""
    from .daemons import start_daemon

    started: list[Daemon] = []

    def start(name: str, port: int = 0, roles: tuple[str, ...] = ()) -> "Daemon":
        d = start_daemon(tmp_path / name, port, roles)
        started.append(d)
        return d

    yield start
    codes = [d.stop() for d in started]
    for d, code in zip(started, codes, strict=True):
        assert code in (0, -9), (d.home / "daemon.log").read_text()  # clean exit, or killed by the test
        assert not (d.home / "daemon.json").exists() or code == -9
