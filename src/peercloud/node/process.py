"""Start `peercloud up` as a child process and wait until it serves: for the demo, tests, benchmarks."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass
class DaemonProcess:
    """A daemon child process and what it published in daemon.json."""

    home: Path
    proc: "subprocess.Popen[bytes]"
    state: dict[str, Any]

    @property
    def peer_id(self) -> str:
        """The daemon's peer ID."""
        return str(self.state["peer_id"])

    @property
    def address(self) -> str:
        """PEERID@HOST:PORT, what `peers add` takes."""
        return f"{self.peer_id}@{self.state['listen'][0]}"

    @property
    def port(self) -> int:
        """The peer port it listens on."""
        return int(self.state["listen"][0].rsplit(":", 1)[1])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait: returns the exit code (0 for a clean shutdown).

        A daemon still running after `timeout` is killed before the timeout is raised, so a
        failed shutdown never leaves a stray daemon behind.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        self.proc.kill()
        self.proc.wait()


def start_daemon(
    home: Path,
    log: TextIO | None = None,
    verbose: bool = False,
    timeout: float = 30.0,
    port: int = 0,
    roles: tuple[str, ...] = (),
) -> DaemonProcess:
    """Init the home if needed, start a daemon on loopback (peer port 0: a free one), wait for daemon.json."""
    cli = [sys.executable, "-m", "peercloud", "--home", str(home)]
    if not (home / "node.key").exists():
        subprocess.run([*cli, "init"], check=True, capture_output=True)
    (home / "daemon.json").unlink(missing_ok=True)
    args = [*cli, "up", "--listen", f"127.0.0.1:{port}", "--api", "127.0.0.1:0", *(["--verbose"] if verbose else [])]
    args += [f"--role={role}" for role in roles]
    sink = log if log is not None else open(home / "daemon.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(args, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon for {home} exited with code {proc.returncode}")
            try:
                state = json.loads((home / "daemon.json").read_text())
                if state.get("pid") == proc.pid:
                    return DaemonProcess(home, proc, state)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon for {home} did not start within {timeout:.0f} s")
    except BaseException:
        proc.kill()  # a launch that fails (its home unreadable, an interrupt) leaves no daemon behind
        proc.wait()
        raise
