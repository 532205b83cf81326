"""Repair time in a five-peer cloud on loopback, next to a plain transfer of the same object.

A `replica-3` class with a 1 s grace period; a 1 GiB object placed on three of five members.
Each round:

1. plain transfer: a sixth peer outside the cloud pins the object from its holders (the swarm
   fetch every repair uses), timed from start to every block verified and durable; then unpins.
2. repair: one holder is stopped; timed from its loss until a member sees the object healthy
   again (three proved copies online), minus the grace period the class waits on purpose.
   The holder is then restarted, and the cloud releases the copy now above the class max.

Prints medians and the ratio repair / plain transfer (target: at most 1.5).

    .venv/bin/python bench/repair.py [--size 1GiB] [--runs 3] [--dir DIR]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peercloud.cli.client import DaemonClient
from peercloud.node.home import NodeHome
from peercloud.node.process import DaemonProcess, start_daemon
from peercloud.units import format_size, parse_size

CLI = [sys.executable, "-m", "peercloud"]
GRACE = 1.0


def cli(home: Path, *args: str) -> str:
    return subprocess.run([*CLI, "--home", str(home), *args], check=True, capture_output=True, text=True).stdout


def api(d: DaemonProcess) -> DaemonClient:
    client = DaemonClient.find(NodeHome(d.home))
    assert client is not None
    return client


def wait(what: str, check: Any, timeout: float = 600.0, every: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)
    return time.monotonic()


def online_copies(watcher: DaemonProcess, oid: str) -> list[str]:
    s = api(watcher).call("GET", f"/v1/objects/{oid}/status")
    total = s["total_blocks"]
    return [h["peer_id"] for h in s["holders"] if h["online"] and h["member"] and len(h["confirmed"]) == total]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="peercloud-bench-repair-", dir=args.dir))
    nodes: list[DaemonProcess] = []
    try:
        nodes = [start_daemon(work / f"p{i}") for i in range(5)]
        outsider = start_daemon(work / "outsider")
        admin = nodes[0]
        api(admin).call("POST", "/v1/cloud", {"name": "bench", "offer": 20 * 2**30, "tags": []})
        for d in nodes[1:]:
            token = api(admin).call("POST", "/v1/cloud/invite", {})["token"]
            api(d).call("POST", "/v1/cloud/join", {"token": token, "offer": 20 * 2**30, "tags": []})
        wait("members", lambda: all(x["online"] for x in api(admin).call("GET", "/v1/cloud")["members"]))
        body = {"name": "bench-3", "replicas": 3, "grace": GRACE}
        api(admin).call("POST", "/v1/classes", body)
        src = work / "object.bin"
        with open(src, "wb") as f:
            for _ in range(size // 2**20):
                f.write(os.urandom(2**20))
        added = api(nodes[1]).stream("/v1/objects", {"path": str(src), "storage_class": "bench-3"}, None)
        oid, verify_cap = added["object_id"], added["verify_cap"]
        src.unlink()
        watcher = admin
        wait("placement", lambda: len(online_copies(watcher, oid)) == 3)
        by_id = {d.peer_id: d for d in nodes}
        plain, repair = [], []
        for run in range(args.runs):
            for pid in online_copies(watcher, oid):
                cli(outsider.home, "peers", "add", by_id[pid].address)
            start = time.monotonic()
            cli(outsider.home, "pin", verify_cap)
            plain.append(time.monotonic() - start)
            cli(outsider.home, "unpin", oid)
            victim = next(by_id[p] for p in online_copies(watcher, oid) if by_id[p] is not watcher)
            port = victim.port
            lost = time.monotonic()
            victim.stop()
            wait("the loss to show", lambda: len(online_copies(watcher, oid)) < 3)
            healed = wait("repair", lambda: len(online_copies(watcher, oid)) == 3)
            repair.append(healed - lost - GRACE)
            print(f"run {run + 1}: plain transfer {plain[-1]:.2f} s, repair {repair[-1]:.2f} s after the grace")
            nodes[nodes.index(victim)] = again = start_daemon(victim.home, port=port)
            by_id[again.peer_id] = again
            wait(
                "the holder to return and extras to go",
                lambda: (
                    len(online_copies(watcher, oid)) == 3
                    and len(api(watcher).call("GET", f"/v1/objects/{oid}/status")["holders"]) >= 3
                ),
                every=0.5,
            )
            time.sleep(3)  # let the released copy go before the next round
        p, r = statistics.median(plain), statistics.median(repair)
        print(f"\n{format_size(size)} replica-3 object, 5-peer cloud, median of {args.runs}:")
        print(f"plain transfer (outside peer pins from the holders): {p:.2f} s ({size / p / 1e6:.0f} MB/s)")
        print(f"repair (holder lost -> healthy, grace of {GRACE:.0f} s excluded): {r:.2f} s")
        print(f"ratio repair / plain transfer: {r / p:.2f} (target <= 1.5)")
    finally:
        for d in [*nodes, *([outsider] if "outsider" in locals() else [])]:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
