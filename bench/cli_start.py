"""Benchmark how fast the command line answers: `peercloud --version`, and `peercloud status` and
`status --node` through a running daemon (real subprocesses, as a user types them).

The limit, measured in the same run, is the bare interpreter (`python -c pass`) and the same
interpreter importing only what every command needs (typer). Medians of 15 runs after one
warm-up each; the target is 0.2 s for `--version` and `status` through the daemon.

    .venv/bin/python bench/cli_start.py [--runs 15]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import start_daemon

PYTHON = sys.executable


def median_seconds(cmd: list[str], runs: int) -> float:
    """Median wall time of a command that must succeed, after one untimed warm-up run."""
    subprocess.run(cmd, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="peercloud-cli-") as tmp:
        home = Path(tmp) / "node"
        subprocess.run([PYTHON, "-m", "peercloud", "--home", str(home), "init"], check=True, capture_output=True)
        daemon = start_daemon(home)
        try:
            cli = [PYTHON, "-m", "peercloud", "--home", str(home)]
            rows = {
                "python -c pass (limit)": [PYTHON, "-c", "pass"],
                "python -c 'import typer' (limit)": [PYTHON, "-c", "import typer"],
                "peercloud --version": [*cli, "--version"],
                "peercloud status (daemon)": [*cli, "status"],
                "peercloud status --node (daemon)": [*cli, "status", "--node"],
            }
            medians = {name: median_seconds(cmd, args.runs) for name, cmd in rows.items()}
        finally:
            daemon.stop()
    bare = medians["python -c pass (limit)"]
    print(f"command line start, median of {args.runs} (target 0.2 s for --version and status):")
    for name, seconds in medians.items():
        print(f"  {name:36s} {seconds * 1000:7.1f} ms   {seconds / bare:5.1f}x the bare interpreter")


if __name__ == "__main__":
    main()
