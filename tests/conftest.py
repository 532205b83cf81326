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

# CI set in the environment turns off pytest's truncation of assertion explanations: a failed
# `==` between two files of a few MiB is then diffed in full (difflib is quadratic, hours; it
# hung CI until the timeout). The suite reports failures alike everywhere.
for _var in ("CI", "BUILD_NUMBER"):
    os.environ.pop(_var, None)
CLI_ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
CLI_ENV.pop("PEERCLOUD_HOME", None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Frames without a line number leave a failure's traceback before pytest formats it: Python
    3.11 gives one when a timeout's signal lands in compiler-made code, and pytest then stops the
    whole run with an INTERNALERROR instead of reporting the timeout."""
    seen: set[int] = set()
    error = call.excinfo.value if call.excinfo is not None else None
    stack = [error] if error is not None else []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            if tb.tb_next.tb_lineno is None:
                tb.tb_next = tb.tb_next.tb_next
            else:
                tb = tb.tb_next
        stack += [x for x in (e.__cause__, e.__context__) if x is not None]
    return (yield)


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
