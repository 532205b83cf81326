"""Deletion time in a four-member cloud on loopback, next to `add` and the CLI's own round trip.

Four real daemons form a cloud with the CLI (`cloud create`, `cloud invite`, `cloud join`). Each
round, a member adds a 64 MiB file under the default class `replica-3` (`add` is timed: the
reference for `rm`; it returns once the owner stored it, placement follows), waits until
`status OBJ --json` says healthy with the owner's extra copy released (three holders), then runs
`peercloud rm OBJ --json`, timed from its start until every holder's signed receipt is in: the
report lists every holder in `deleted` and none pending. `rm` waits up to 10 s for the receipts
of online holders; if it returns earlier, the same report is polled every 50 ms through the
daemon's API (the endpoint `status OBJ --json` calls, without a CLI start per poll). One untimed
warm-up round (this VM makes the first touch of fresh memory slow), then `--runs` timed ones:
medians, min and max. The same-run reference is the median round trip of
`peercloud status --node` (the CLI's floor) and of the `add`s.

Also prints the bytes freed on the holders: the sum of the `blocks` table sizes in each home's
index.sqlite, and of the files under its blocks/ folder, before and after a delete.

    .venv/bin/python bench/delete.py [--size 64MiB] [--runs 5] [--dir DIR]
"""

import argparse
import functools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peercloud.cli.client import DaemonClient
from peercloud.node.home import NodeHome
from peercloud.node.process import DaemonProcess, start_daemon
from peercloud.units import format_size, parse_size

CLI = [sys.executable, "-m", "peercloud"]
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("PEERCLOUD_HOME", None)
MEMBERS = 4
CLASS = "replica-3"
COPIES = 3


def cli(home: Path, *args: str) -> str:
    return subprocess.run(
        [*CLI, "--home", str(home), *args], check=True, capture_output=True, text=True, env=ENV
    ).stdout


def cli_json(home: Path, *args: str) -> Any:
    return json.loads(cli(home, *args, "--json"))


def timed(home: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = cli(home, *args)
    return time.perf_counter() - start, out


def api(d: DaemonProcess) -> DaemonClient:
    client = DaemonClient.find(NodeHome(d.home))
    assert client is not None
    return client


def wait(what: str, check: Callable[[], bool], timeout: float = 300.0, every: float = 0.05) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)
    return time.perf_counter()


def stored(home: Path) -> tuple[int, int]:
    """Bytes of blocks a home holds: by its index (`blocks` table) and on disk (blocks/ files)."""
    db = sqlite3.connect(f"file:{home / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        indexed = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM blocks").fetchone()[0])
    finally:
        db.close()
    files = sum(p.stat().st_size for p in (home / "blocks").rglob("*") if p.is_file())
    return indexed, files


def settled(owner: DaemonProcess, oid: str) -> bool:
    """Healthy, with exactly the class's copies held (the owner's extra, if any, released)."""
    s = cli_json(owner.home, "status", oid)
    return bool(s["health"] == "healthy" and len(holding(s)) == COPIES)


def holding(status: dict[str, Any]) -> set[str]:
    """Holders that announced or proved blocks of the object."""
    return {h["peer_id"] for h in status["holders"] if h["blocks"] or h["confirmed"]}


def all_online(d: DaemonProcess) -> bool:
    members = cli_json(d.home, "cloud", "members")["members"]
    return len(members) == MEMBERS and all(x["online"] for x in members)


def all_in(report: dict[str, Any], holders: set[str]) -> bool:
    return not report["pending"] and holders <= set(report["deleted"])


def one_round(owner: DaemonProcess, src: Path, homes: list[Path]) -> dict[str, Any]:
    add_s, out = timed(owner.home, "add", str(src), "--class", CLASS, "--json")
    oid = json.loads(out)["object_id"]
    wait("the object to be healthy", lambda: settled(owner, oid))
    holders = holding(cli_json(owner.home, "status", oid))
    before = [stored(h) for h in homes]
    start = time.perf_counter()
    rm_s, out = timed(owner.home, "rm", oid, "--json")
    report = json.loads(out)
    end = start + rm_s
    if not all_in(report, holders):
        client = api(owner)
        end = wait(
            "every holder's receipt",
            lambda: all_in(client.call("GET", f"/v1/objects/{oid}/status")["deletion"], holders),
            timeout=120,
        )
        report = cli_json(owner.home, "status", oid)["deletion"]
    after = [stored(h) for h in homes]
    if report["refused"] or report["kept"] or report["outside_control"] or set(report["deleted"]) != holders:
        raise SystemExit(f"unexpected report: {report} (holders {sorted(holders)})")
    return {
        "add": add_s,
        "rm_return": rm_s,
        "all_receipts": end - start,
        "holders": len(holders),
        "freed_index": sum(b[0] - a[0] for b, a in zip(before, after, strict=True)),
        "freed_files": sum(b[1] - a[1] for b, a in zip(before, after, strict=True)),
        "held_index": sum(b[0] for b in before),
        "left_index": sum(a[0] for a in after),
    }


def median_seconds(home: Path, args: list[str], runs: int) -> list[float]:
    cli(home, *args)  # warm-up
    return [timed(home, *args)[0] for _ in range(runs)]


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="64MiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="peercloud-bench-delete-", dir=args.dir))
    nodes: list[DaemonProcess] = []
    load = os.getloadavg()[0]
    try:
        admin = start_daemon(work / "p0")
        nodes.append(admin)
        cli(admin.home, "cloud", "create", "bench", "--offer", "10GiB", "--tag", "site=s0")
        for i in range(1, MEMBERS):
            d = start_daemon(work / f"p{i}")
            nodes.append(d)
            token = cli(admin.home, "cloud", "invite").strip().splitlines()[-1]
            cli(d.home, "cloud", "join", token, "--offer", "10GiB", "--tag", f"site=s{i}")
        for d in nodes:
            wait("every member online", functools.partial(all_online, d), timeout=60)
        classes = {c["name"] for c in cli_json(admin.home, "class", "ls")}
        if CLASS not in classes:
            cli(admin.home, "class", "add", CLASS, "--replicas", str(COPIES))
        owner = nodes[1]  # a plain member deletes what it added
        homes = [d.home for d in nodes]
        src = work / "object.bin"
        with open(src, "wb") as f:
            for _ in range(size // 2**20):
                f.write(os.urandom(2**20))
        rounds = []
        for run in range(args.runs + 1):
            r = one_round(owner, src, homes)
            label = "warm-up" if run == 0 else f"run {run}"
            print(
                f"{label}: add {r['add']:.3f} s, rm returned {r['rm_return']:.3f} s, "
                f"all {r['holders']} receipts {r['all_receipts']:.3f} s, freed {format_size(r['freed_index'])}",
                flush=True,
            )
            if run:
                rounds.append(r)
        node_rt = median_seconds(owner.home, ["status", "--node"], args.runs)
        load = max(load, os.getloadavg()[0])
    finally:
        for d in nodes:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
    last = rounds[-1]
    print(
        f"\n{format_size(size)} {CLASS} object, {MEMBERS}-member cloud on loopback, "
        f"median of {args.runs} after a warm-up:"
    )
    print(f"rm until every holder's receipt: {spread([r['all_receipts'] for r in rounds])}")
    print(f"  rm command returned:           {spread([r['rm_return'] for r in rounds])}")
    print(f"reference, status --node round trip (CLI floor): {spread(node_rt)}")
    print(f"reference, add of the same file:                 {spread([r['add'] for r in rounds])}")
    rm_m = statistics.median(r["all_receipts"] for r in rounds)
    add_m = statistics.median(r["add"] for r in rounds)
    print(f"ratio rm / add: {rm_m / add_m:.2f}; rm / status --node: {rm_m / statistics.median(node_rt):.1f}")
    print(
        f"bytes freed on the holders per delete (last run): {format_size(last['freed_index'])} by the index "
        f"({last['freed_index']} B of {last['held_index']} B held; {last['left_index']} B left), "
        f"{format_size(last['freed_files'])} of block files ({COPIES} x {format_size(size)} = "
        f"{format_size(COPIES * size)} plaintext)"
    )
    print(f"load average (1 min, highest seen) {load:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
