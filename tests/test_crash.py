"""kill -9 of `peercloud add` at many points: the index never names a missing or partial block."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from peercloud.content import merkle

from .conftest import CLI_ENV, run_cli


def _files(home: Path) -> int:
    return sum(1 for p in (home / "blocks").rglob("*") if p.is_file()) + sum(1 for _ in (home / "tmp").iterdir())


def _kill_add_when(home: Path, src: Path, files_seen: int, cls: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "peercloud", "--home", str(home), "add", str(src), "--class", cls],
        env=CLI_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and _files(home) < files_seen and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize(
    ("files_seen", "cls"), [(1, "replica-1"), (25, "replica-1"), (90, "ec-2+1"), (140, "replica-1"), (10_000, "ec-2+1")]
)
def test_kill_during_add_leaves_consistent_index(
    home: Path, make_file: Callable[..., Path], tmp_path: Path, files_seen: int, cls: str
) -> None:
    src = make_file(150 * 1024 * 1024 + 777, seed=files_seen)
    _kill_add_when(home, src, files_seen, cls)
    db = sqlite3.connect(home / "index.sqlite")
    rows = db.execute("SELECT id, size FROM blocks").fetchall()
    for bid, size in rows:
        data = (home / "blocks" / bid.hex()[:2] / bid.hex()).read_bytes()
        assert len(data) == size
        assert merkle.block_id(data) == bid
    db.close()
    assert run_cli(home, "fsck").returncode == 0
    assert list((home / "tmp").iterdir()) == []
    listing = json.loads(run_cli(home, "ls", "--json", check=True).stdout)
    for obj in listing:  # if the add finished before the kill, the object must be whole
        out = tmp_path / "back"
        run_cli(home, "get", obj["object_id"], "-o", str(out), check=True)
        assert out.read_bytes() == src.read_bytes()
    # The node keeps working afterwards: the same file adds and reads back.
    again = json.loads(run_cli(home, "add", str(src), "--json", check=True).stdout)
    run_cli(home, "get", again["read_cap"], "-o", str(tmp_path / "again"), check=True)
    assert (tmp_path / "again").read_bytes() == src.read_bytes()
