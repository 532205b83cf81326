"""Real daemons on loopback for tests: start, address, stop (and check they stopped cleanly)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import CLI_ENV, run_cli


@dataclass
class Daemon:
    home: Path
    proc: subprocess.Popen[bytes]
    state: dict[str, Any]

    @property
    def peer_id(self) -> str:
        return str(self.state["peer_id"])

    @property
    def address(self) -> str:
        return f"{self.peer_id}@{self.state['listen'][0]}"

    @property
    def port(self) -> int:
        return int(self.state["listen"][0].rsplit(":", 1)[1])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_daemon(home: Path) -> Daemon:
    if not (home / "node.key").exists():
        run_cli(home, "init", check=True)
    (home / "daemon.json").unlink(missing_ok=True)
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peercloud",
            "--home",
            str(home),
            "up",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--verbose",
        ],
        env=CLI_ENV,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {(home / 'daemon.log').read_text()}")
        try:
            state = json.loads((home / "daemon.json").read_text())
            if state["pid"] == proc.pid:
                return Daemon(home, proc, state)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not start")


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def connected(d: Daemon, other: Daemon) -> bool:
    return any(p["peer_id"] == other.peer_id and p["connected"] for p in d.json("peers"))


def block_files(home: Path) -> int:
    return sum(1 for p in (home / "blocks").rglob("*") if p.is_file())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
