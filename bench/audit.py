"""How long until an honest holder of a new 1 GiB object counts: every block proved by audits.

Two real daemons on loopback form a cloud; the admin adds a 1 GiB file with class replica-2,
the member pulls its copy and announces it, and the admin's auditor proves the claim block by
block (one random 64 KiB leaf each). Printed: seconds from the member's full claim to its full
proof on the admin, against the 60 s target, and the audit traffic per byte held.

    .venv/bin/python bench/audit.py [--size-mib 1024]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peercloud.node.process import start_daemon

TARGET_S = 60.0


def cli(home: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "peercloud", "--home", str(home), *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peercloud-bench-audit-"))
    nodes = []
    try:
        src = work / "big.bin"
        with open(src, "wb") as f:  # warm-up and data: fresh memory and disk pages touched once, untimed
            for _ in range(args.size_mib):
                f.write(os.urandom(1024 * 1024))
        admin = start_daemon(work / "admin")
        member = start_daemon(work / "member")
        nodes = [admin, member]
        cli(admin.home, "cloud", "create", "lab", "--offer", "100GiB")
        token = cli(admin.home, "cloud", "invite").strip().splitlines()[-1]
        cli(member.home, "cloud", "join", token, "--offer", "100GiB")
        added = json.loads(cli(admin.home, "add", str(src), "--class", "replica-2", "--json"))
        oid, total = added["object_id"], added["blocks"] - 1
        claimed_at = proved_at = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proved_at is None:
            status = json.loads(cli(admin.home, "status", oid, "--json"))
            row = next((h for h in status["holders"] if h["peer_id"] == member.peer_id), None)
            now = time.monotonic()
            if row is not None and len(row["blocks"]) == total and claimed_at is None:
                claimed_at = now
            if row is not None and len(row["confirmed"]) == total and claimed_at is not None:
                proved_at = now
            time.sleep(0.2)
        if claimed_at is None or proved_at is None:
            print("the member's copy was not claimed and proved within 600 s: MISS")
            return
        took = proved_at - claimed_at
        leaves = total * 64 * 1024
        print(f"{args.size_mib} MiB object, {total} blocks, replica-2 on 2 daemons (loopback)")
        print(
            f"from the member's full claim to its full proof on the admin: {took:.1f} s   target < {TARGET_S:.0f} s   "
            f"{'PASS' if took < TARGET_S else 'MISS'}"
        )
        print(f"audit traffic: {leaves / 2**20:.0f} MiB of leaves for {args.size_mib} MiB held (one leaf per block)")
    finally:
        for d in nodes:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
