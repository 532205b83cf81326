"""Real daemons on loopback for tests: start, address, stop (and check they stopped cleanly)."""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from peercloud.node.process import DaemonProcess
from peercloud.node.process import start_daemon as launch
from peercloud.store.partial import HEADER_SIZE, RECORD

from .conftest import run_cli


class Daemon(DaemonProcess):
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def start_daemon(home: Path, port: int = 0, roles: tuple[str, ...] = ()) -> Daemon:
    d = launch(home, verbose=True, port=port, roles=roles)
    return Daemon(d.home, d.proc, d.state)


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def connected(d: Daemon, other_peer_id: str) -> bool:
    return any(p["peer_id"] == other_peer_id and p["connected"] for p in d.json("peers"))


def block_files(home: Path) -> int:
    return sum(1 for p in (home / "blocks").rglob("*") if p.is_file())


def partial_mib(out: Path) -> int:
    """MiB a one-pass get to `out` has written so far (its partial file's allocated blocks)."""
    return sum(p.stat().st_blocks * 512 for p in out.parent.glob(f".{out.name}.*.part")) >> 20


def journalled(out: Path) -> int:
    """Segments of a get to `out` verified and durable in its partial file, by its journal."""
    sizes = [p.stat().st_size for p in out.parent.glob(f".{out.name}.*.journal")]
    return sum(max(0, size - HEADER_SIZE) // RECORD.size for size in sizes)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
