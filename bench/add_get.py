"""Benchmark `peercloud add` and `get` against `cp` of the same file, in the same run.

For a random file (default 1 GiB) it alternates cp, cp + fsync, add and get, five times each,
and prints median MB/s and the ratios. Then it adds and gets a larger file (default 4 GiB) once
to show peak RSS does not grow with file size. Every peercloud run is a real CLI subprocess on a
fresh node home, so interpreter start-up is included, as a user sees it.

    .venv/bin/python bench/add_get.py [--size 1GiB] [--runs 5] [--rss-size 4GiB] [--dir DIR]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peercloud.units import format_size, parse_size

PEERCLOUD = [sys.executable, "-m", "peercloud"]


def make_random_file(path: Path, size: int) -> None:
    chunk = 64 * 1024 * 1024
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    os.sync()


def timed(cmd: list[str]) -> float:
    """Wall seconds of a command that must succeed."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def run_with_rss(cmd: list[str]) -> tuple[float, int, str]:
    """Like timed(), but reaps the child with wait4 to read its own peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss, out.decode()


def fresh_home(base: Path, name: str) -> Path:
    home = base / name
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run([*PEERCLOUD, "--home", str(home), "init"], check=True, capture_output=True)
    return home


def add_then_get(base: Path, src: Path, tag: str) -> tuple[float, float, int, int]:
    home = fresh_home(base, f"node-{tag}")
    t_add, rss_add, out = run_with_rss([*PEERCLOUD, "--home", str(home), "add", str(src), "--json"])
    cap = json.loads(out)["read_cap"]
    dst = base / f"get-{tag}.out"
    t_get, rss_get, _ = run_with_rss([*PEERCLOUD, "--home", str(home), "get", cap, "-o", str(dst)])
    if os.path.getsize(dst) != os.path.getsize(src):
        raise SystemExit("get returned the wrong size")
    dst.unlink()
    shutil.rmtree(home)
    return t_add, t_get, rss_add, rss_get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rss-size", default="4GiB", help="file size for the memory check (0 to skip)")
    ap.add_argument("--dir", default=None, help="where to put files (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="peercloud-bench-", dir=args.dir))
    try:
        src = base / "source.bin"
        make_random_file(src, size)
        mb = size / 1e6
        times: dict[str, list[float]] = {"cp": [], "cp+fsync": [], "add": [], "get": []}
        rss: list[int] = []
        for i in range(args.runs):
            dst = base / "copy.bin"
            times["cp"].append(timed(["cp", str(src), str(dst)]))
            dst.unlink()
            times["cp+fsync"].append(timed(["sh", "-c", f"cp {src} {dst} && sync {dst}"]))
            dst.unlink()
            t_add, t_get, r_add, r_get = add_then_get(base, src, str(i))
            times["add"].append(t_add)
            times["get"].append(t_get)
            rss += [r_add, r_get]
            print(
                f"run {i + 1}: cp {mb / times['cp'][-1]:.0f}  cp+fsync {mb / times['cp+fsync'][-1]:.0f}  "
                f"add {mb / t_add:.0f}  get {mb / t_get:.0f} MB/s",
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{format_size(size)} file, median of {args.runs} (MB/s, higher is better):")
        for k, v in med.items():
            print(f"  {k:<9} {mb / v:8.0f} MB/s   ({v:.2f} s)")
        print("ratios (speed / speed of cp; target >= 0.5):")
        for op in ("add", "get"):
            print(f"  {op}/cp = {med['cp'] / med[op]:.2f}   {op}/(cp+fsync) = {med['cp+fsync'] / med[op]:.2f}")
        print(f"peak RSS at {format_size(size)}: {max(rss) / 1024:.0f} MiB")
        src.unlink()
        rss_size = parse_size(args.rss_size)
        if rss_size:
            big = base / "big.bin"
            make_random_file(big, rss_size)
            t_add, t_get, r_add, r_get = add_then_get(base, big, "rss")
            print(
                f"{format_size(rss_size)} file: add {rss_size / 1e6 / t_add:.0f} MB/s, "
                f"peak RSS {r_add / 1024:.0f} MiB; "
                f"get {rss_size / 1e6 / t_get:.0f} MB/s, peak RSS {r_get / 1024:.0f} MiB (target < 200 MiB)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
