"""Buckets with real daemons on loopback: a tree put through the CLI, a prefix listed in a
100,000-key bucket, and a second device catching up with that bucket.

Three daemons form a cloud with the CLI (`cloud create`, `cloud invite`, `cloud join`); node p0
writes, p1 is the second device, p2 a plain member. Buckets are of class `replica-1`: one copy
of each object and index batch, which the cloud's placement may move from the writer to another
member (in the background, once audits proved the writer's copy); the output says how many of
the batches an importer already held when it started.

0. Warm-up, untimed: a file larger than the work is written, fsynced and deleted (this VM makes
   the first touch of fresh memory slow), and a small tree (--warm-files) is put once, which
   also estimates how long the full put takes: above 10 minutes, 2,000 files are measured
   and the figure extrapolated (the output says so).
1. `peercloud put DIR BUCKET/PREFIX/` of a tree of small files (random sizes 1 to 64 KiB, seeded,
   in 4 x 5 nested folders), end to end through the CLI, into a fresh prefix each run; against
   `cp -r` of the same tree followed by `sync`, alternated with it in the same run: files/s, MB/s,
   ratio; also the put's rate over its first and last fifth of the files (from the writer's
   index, polled read-only), the daemons' CPU meanwhile and how many index batches it wrote.
2. A bucket of --keys keys: ten real files are put under `real/` with the CLI, the daemon stops,
   and the rest of the keys are written into its index as its own pending entries (as a put
   leaves them before its batch is written: `Index.write_names`, writer = the node, naming the
   ten real objects), in folders of --prefix-keys keys. At start the daemon writes them as
   signed batches of its log (1000 entries each), each a cloud object, and sends its head to
   the members: that flush is timed (daemon start to no entry pending). Then `peercloud ls
   BUCKET/PREFIX/` of one folder, end to end (process start included), median of --runs after a
   warm-up, with `status --node` (the CLI's floor through the daemon) as the reference.
3. `bucket import CAP` of the write cap (`bucket share --write`) on p1, timed from the command's
   start until its index (polled read-only) lists every key; bytes p1 received meanwhile
   (bytes_in of `GET /v1/node`, what `status --node` shows) and CPU seconds of p0 and p1.
   Then `ls BUCKET --recursive --json` on p1 confirms the count (timed too, for information).
   3b, the same for p2 importing the read cap of the bucket of figure 1 (`put DIR` writes its
   entries in full batches of 1000, so that log holds one batch per 1000 files).
4. Peak RSS (VmHWM) of every daemon.

Prints each figure, with PASS or MISS where it has a target. About 2 to 3 minutes at the defaults
on the 2-vCPU reference machine.

    .venv/bin/python bench/buckets.py [--files 10000] [--keys 100000] [--prefix-keys 1000]
        [--runs 5] [--put-runs 1] [--dir DIR] [--keep] [--verbose]
"""

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import peercloud
from peercloud.cli.client import DaemonClient
from peercloud.identity import PeerId
from peercloud.names.log import Clock
from peercloud.node.home import NodeHome
from peercloud.node.process import DaemonProcess, start_daemon
from peercloud.store.buckettables import upper_bound
from peercloud.store.index import Index, KeyRow

CLI = [sys.executable, "-m", "peercloud"]
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("PEERCLOUD_HOME", None)
MEMBERS = 3
CLASS = "replica-1"
OFFER = "100GiB"
TICKS = os.sysconf("SC_CLK_TCK")
MB = 1e6
KIB = 1024
FOLDERS = [f"a{i}/b{j}" for i in range(4) for j in range(5)]  # a few nested folders
PUT_LIMIT = 600.0  # seconds: a longer put is measured on SMALL_TREE files and extrapolated
SMALL_TREE = 2000
REAL_FILES = 10
# targets
LS_SECONDS = 1.0


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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(what: str, check: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    """Poll until `check()`; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def quiet(nodes: list[DaemonProcess], timeout: float = 120.0) -> float:
    """Wait until no daemon used more than a quarter of a CPU second in each of 2 seconds."""
    start, calm = time.monotonic(), 0
    while calm < 2 and time.monotonic() - start < timeout:
        before = [cpu_seconds(d.proc.pid) for d in nodes]
        time.sleep(1.0)
        busy = max(cpu_seconds(d.proc.pid) - b for d, b in zip(nodes, before, strict=True))
        calm = calm + 1 if busy < 0.25 else 0
    return time.monotonic() - start


def warm_up(work: Path, size: int) -> None:
    """Touch fresh memory and disk once, untimed: write, fsync and delete a file larger than the work."""
    chunk = os.urandom(2**20)
    path = work / "warm-up.bin"
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)


def scalar(db: sqlite3.Connection, sql: str, *args: Any) -> int:
    row = db.execute(sql, args).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


# -- the cloud


def start_all(homes: list[Path], ports: list[int], verbose: bool) -> list[DaemonProcess]:
    """Start daemons side by side (each takes a moment to import and open its index)."""
    with ThreadPoolExecutor(len(homes)) as pool:
        futures = [pool.submit(start_daemon, h, port=p, verbose=verbose) for h, p in zip(homes, ports, strict=True)]
    started = [f.result() for f in futures if f.exception() is None]
    if len(started) < len(homes):
        for d in started:
            d.stop()
        raise SystemExit(f"a daemon did not start: {next(f.exception() for f in futures if f.exception())}")
    return started


def all_online(d: DaemonProcess) -> bool:
    members = api(d).call("GET", "/v1/cloud")["members"]
    return len(members) == MEMBERS and all(x["online"] for x in members)


def form_cloud(work: Path, verbose: bool) -> list[DaemonProcess]:
    nodes = start_all([work / f"p{i}" for i in range(MEMBERS)], [0] * MEMBERS, verbose)
    admin = nodes[0]
    cli(admin.home, "cloud", "create", "bench", "--offer", OFFER, "--tag", "site=s0")
    for i, d in enumerate(nodes[1:], start=1):
        token = cli(admin.home, "cloud", "invite").strip().splitlines()[-1]
        cli(d.home, "cloud", "join", token, "--offer", OFFER, "--tag", f"site=s{i}")
    for d in nodes:
        wait(f"{d.home.name} to see every member online", functools.partial(all_online, d), 60)
    return nodes


# -- 1. the tree


def make_tree(root: Path, files: int, seed: int) -> int:
    """`files` random files of 1 to 64 KiB in FOLDERS, seeded; returns their bytes."""
    rng = random.Random(seed)
    total = 0
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(files):
        size = rng.randint(1 * KIB, 64 * KIB)
        (root / FOLDERS[i % len(FOLDERS)] / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))
        total += size
    os.sync()
    return total


def cp_sync(src: Path, dst: Path) -> float:
    """Seconds of `cp -r SRC DST && sync`; the copy is removed (and synced) afterwards, untimed."""
    start = time.perf_counter()
    subprocess.run(["sh", "-c", f"cp -r '{src}' '{dst}' && sync"], check=True)
    took = time.perf_counter() - start
    shutil.rmtree(dst)
    os.sync()
    return took


def put_tree(
    writer: DaemonProcess, src: Path, target: str, files: int, bucket_id: bytes
) -> tuple[float, list[tuple[float, int]]]:
    """Seconds of `peercloud put SRC TARGET` (CLI start to exit), and (seconds, keys put) samples
    taken about every second from the writer's index (polled read-only) while it ran."""
    prefix = target.split("/", 1)[1]
    upper = upper_bound(prefix)
    assert upper is not None
    db = read_only(writer.home / "index.sqlite")
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, "--home", str(writer.home), "put", str(src), target, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                sql = "SELECT COUNT(*) FROM bucket_keys WHERE bucket_id = ? AND key >= ? AND key < ?"
                samples.append((time.perf_counter() - start, scalar(db, sql, bucket_id, prefix, upper)))
        took = time.perf_counter() - start
    finally:
        db.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        raise SystemExit(f"put {target} failed (exit {proc.returncode}): {err.strip()}")
    result = json.loads(out)
    if result["files"] != files:
        raise SystemExit(f"put {target}: {result['files']} files put, not {files}")
    return took, samples


def rates(took: float, samples: list[tuple[float, int]], files: int, part: int) -> tuple[float, float]:
    """Files/s over the first `part` files of a put and over its last `part` (from the samples)."""
    first = next(((t, n) for t, n in samples if n >= part), (took, files))
    last = next(((t, n) for t, n in samples if n >= files - part), (took, files))
    return first[1] / first[0], (files - last[1]) / max(took - last[0], 1e-9) if files > last[1] else float("nan")


# -- 2. the big bucket


def pending_of(home: Path, bucket_id: bytes) -> int:
    db = read_only(home / "index.sqlite")
    try:
        return scalar(db, "SELECT COUNT(*) FROM bucket_keys WHERE bucket_id = ? AND pending = 1", bucket_id)
    finally:
        db.close()


def log_seq(home: Path, bucket_id: bytes, writer: bytes) -> int:
    """Our own log's last batch (bucket_logs) on the writer; what it has read of `writer` on others."""
    db = read_only(home / "index.sqlite")
    try:
        return scalar(db, "SELECT MAX(seq) FROM bucket_logs WHERE bucket_id = ? AND writer = ?", bucket_id, writer)
    finally:
        db.close()


def head_seq(home: Path, bucket_id: bytes, writer: bytes) -> int:
    db = read_only(home / "index.sqlite")
    try:
        return scalar(db, "SELECT MAX(seq) FROM bucket_heads WHERE bucket_id = ? AND writer = ?", bucket_id, writer)
    finally:
        db.close()


def held_batches(reader: Path, writer: Path, bucket_id: bytes) -> tuple[int, int]:
    """(batch objects of the writer's log of a bucket the reader holds a copy of, all of them)."""
    db = read_only(writer / "index.sqlite")
    try:
        ids = [
            bytes(r[0]) for r in db.execute("SELECT object_id FROM bucket_batches WHERE bucket_id = ?", (bucket_id,))
        ]
    finally:
        db.close()
    db = read_only(reader / "index.sqlite")
    try:
        held = sum(1 for oid in ids if db.execute("SELECT 1 FROM holds WHERE object_id = ?", (oid,)).fetchone())
    finally:
        db.close()
    return held, len(ids)


def big_keys(total: int, per_prefix: int, real: int) -> list[str]:
    """The seeded keys: folders d000/, d001/, … of `per_prefix` keys; `real` fewer in the last one
    (the real files under real/ make up the total)."""
    return [f"d{i // per_prefix:03d}/obj{i % per_prefix:05d}.dat" for i in range(total - real)]


def seed_pending(home: Path, bucket_id: bytes, writer: bytes, keys: list[str]) -> int:
    """Write the keys into a stopped node's index as its own pending entries, naming the real
    objects already under real/ in turn. Returns how many real objects they name."""
    index = Index(home / "index.sqlite")
    try:
        real = [r for r in index.list_keys(bucket_id, "real/", "", 1000) if not r.removed]
        if not real:
            raise SystemExit("no real key under real/ to name")
        clock = Clock()
        rows = [
            KeyRow(
                bucket_id,
                key,
                clock.tick(),
                writer,
                False,
                r.object_id,
                r.object_key,
                r.size,
                r.mtime,
                r.content_type,
                r.storage_class,
                {},
            )
            for key, r in ((k, real[i % len(real)]) for i, k in enumerate(keys))
        ]
        index.write_names(rows)
        return len(real)
    finally:
        index.close()


def ls_lines(out: str) -> int:
    return sum(1 for line in out.splitlines() if line.strip())


def median_runs(runs: int, run: Callable[[], float]) -> list[float]:
    run()  # warm-up
    return [run() for _ in range(runs)]


def spread(xs: list[float], unit: str = "s") -> str:
    return f"{statistics.median(xs):.3f} {unit} (min {min(xs):.3f}, max {max(xs):.3f})"


# -- 3. the catch-up


def catch_up(
    reader: DaemonProcess, writer: DaemonProcess, cap: str, alias: str, bucket_id: bytes, total: int, timeout: float
) -> dict[str, Any]:
    """Import the cap on `reader` as `alias`, polling its index until it lists `total` keys of the bucket."""
    client = api(reader)
    held = held_batches(reader.home, writer.home, bucket_id)
    before_node = client.call("GET", "/v1/node")
    before_peers = {p["peer_id"]: p for p in client.call("GET", "/v1/peers")}
    cpu0 = cpu_seconds(reader.proc.pid), cpu_seconds(writer.proc.pid)
    db = read_only(reader.home / "index.sqlite")
    returned_at: float | None = None
    listed_at: float | None = None
    timeline: list[tuple[float, int]] = []
    start = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "--home", str(reader.home), "bucket", "import", cap, "--as", alias, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        while True:
            now = time.monotonic() - start
            if returned_at is None and proc.poll() is not None:
                returned_at = now
            keys = scalar(db, "SELECT COUNT(*) FROM bucket_keys WHERE bucket_id = ? AND removed = 0", bucket_id)
            if not timeline or timeline[-1][1] != keys:
                timeline.append((now, keys))
            if keys >= total:
                listed_at = now
                break
            if now > timeout:
                break
            time.sleep(0.05)
        cpu = cpu_seconds(reader.proc.pid) - cpu0[0], cpu_seconds(writer.proc.pid) - cpu0[1]
        after_node = client.call("GET", "/v1/node")
        after_peers = {p["peer_id"]: p for p in client.call("GET", "/v1/peers")}
        stdout, stderr = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
        if returned_at is None:
            returned_at = time.monotonic() - start
    finally:
        db.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    relinked = [
        pid[:12]
        for pid, p in after_peers.items()
        if pid in before_peers and p.get("since") != before_peers[pid].get("since")
    ]
    from_writer = after_peers.get(writer.peer_id, {}).get("bytes_in", 0) - before_peers.get(writer.peer_id, {}).get(
        "bytes_in", 0
    )
    return {
        "listed_at": listed_at,
        "returned_at": returned_at,
        "exit_code": proc.returncode,
        "import": json.loads(stdout) if proc.returncode == 0 and stdout.strip() else stderr.strip(),
        "bytes_in": after_node["bytes_in"] - before_node["bytes_in"],
        "bytes_from_writer": from_writer,
        "relinked": relinked,
        "cpu_reader": cpu[0],
        "cpu_writer": cpu[1],
        "timeline": timeline,
        "keys": timeline[-1][1] if timeline else 0,
        "held": held,
    }


def report_catch_up(r: dict[str, Any], total: int, timeout: float) -> None:
    listed_at = r["listed_at"]
    took = f"{listed_at:.2f} s" if listed_at is not None else f"NOT DONE after {timeout:.0f} s"
    held, batches = r["held"]
    print(f"   batch objects of the writer's log the importer held a copy of beforehand: {held:,} of {batches:,}")
    print(f"   import command start -> {r['keys']:,} of {total:,} keys listed: {took}")
    reported = f"it reported {r['import']['keys']:,} keys" if isinstance(r["import"], dict) else f"error: {r['import']}"
    print(f"   import command returned at {r['returned_at']:.2f} s (exit {r['exit_code']}; {reported})")
    print(
        f"   bytes received meanwhile (status --node bytes_in): {r['bytes_in'] / MB:.2f} MB "
        f"({r['bytes_in'] / total:.0f} B per key; {r['bytes_from_writer'] / MB:.2f} MB from the writer)"
        + (f"; links re-established meanwhile: {', '.join(r['relinked'])}" if r["relinked"] else "")
    )
    print(f"   CPU meanwhile: importer {r['cpu_reader']:.1f} s, writer {r['cpu_writer']:.1f} s (2 cores)")
    marks = [(t, k) for t, k in r["timeline"] if k]
    if marks:
        half = next((t for t, k in marks if k >= total // 2), float("nan"))
        print(f"   first keys listed at {marks[0][0]:.2f} s, half of them at {half:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="files of the tree put in figure 1")
    ap.add_argument("--warm-files", type=int, default=500, help="files of the untimed warm-up put")
    ap.add_argument("--put-runs", type=int, default=1, help="timed puts of the tree (cp -r + sync: 3 at least)")
    ap.add_argument("--keys", type=int, default=100_000, help="keys of the bucket of figures 2 and 3")
    ap.add_argument("--prefix-keys", type=int, default=1000, help="keys of the listed prefix")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of ls (after one warm-up)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for a flush or a catch-up")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (homes and logs)")
    ap.add_argument("--verbose", action="store_true", help="daemons log at INFO")
    args = ap.parse_args()
    if args.keys < 2 * args.prefix_keys + REAL_FILES:
        raise SystemExit("--keys must hold at least two full prefixes and the real files")
    work = Path(tempfile.mkdtemp(prefix="peercloud-bench-buckets-", dir=args.dir))
    nodes: list[DaemonProcess] = []
    began = time.monotonic()
    load = os.getloadavg()[0]
    try:
        # -- 0. warm-up and the cloud
        warm_up(work, max(2**30, 3 * args.files * 33 * KIB))
        t = time.monotonic()
        nodes = form_cloud(work, args.verbose)
        writer, device, member = nodes
        me = PeerId.parse(writer.peer_id).public_key
        print(
            f"peercloud {peercloud.__version__} from {Path(peercloud.__file__).parent}; "
            f"cloud of {MEMBERS} formed with the CLI in {time.monotonic() - t:.1f} s",
            flush=True,
        )

        # -- 1. put of a tree against cp -r + sync
        tree_id = bytes.fromhex(cli_json(writer.home, "bucket", "create", "tree", "--class", CLASS)["bucket_id"])
        warm_tree = work / "warm-tree"
        warm_bytes = make_tree(warm_tree, args.warm_files, seed=1)
        warm_s, _ = put_tree(writer, warm_tree, "tree/warm/", args.warm_files, tree_id)
        cp_sync(warm_tree, work / "warm-copy")
        estimate = warm_s * args.files / args.warm_files
        files = args.files if estimate <= PUT_LIMIT else min(SMALL_TREE, args.files)
        print(
            f"warm-up put of {args.warm_files} files ({warm_bytes / MB:.1f} MB): {warm_s:.1f} s "
            f"({args.warm_files / warm_s:.0f} files/s); {args.files:,} files estimated at {estimate:.0f} s"
            + ("" if files == args.files else f": over {PUT_LIMIT:.0f} s, measuring {files:,} and extrapolating"),
            flush=True,
        )
        src = work / "tree"
        tree_bytes = make_tree(src, files, seed=2)
        quiet(nodes)
        cp_times: list[float] = []
        put_times: list[float] = []
        batches_per_put: list[int] = []
        put_rates: list[tuple[float, float]] = []
        put_cpu: list[list[float]] = []
        for run in range(max(3, args.put_runs)):
            cp_times.append(cp_sync(src, work / f"copy-{run}"))
            line = f"run {run + 1}: cp -r + sync {cp_times[-1]:.2f} s"
            if run < args.put_runs:
                seq0 = log_seq(writer.home, tree_id, me)
                cpu0 = [cpu_seconds(d.proc.pid) for d in nodes]
                took, samples = put_tree(writer, src, f"tree/run{run + 1}/", files, tree_id)
                put_cpu.append([cpu_seconds(d.proc.pid) - c for d, c in zip(nodes, cpu0, strict=True)])
                put_times.append(took)
                put_rates.append(rates(took, samples, files, max(1, files // 5)))
                batches_per_put.append(log_seq(writer.home, tree_id, me) - seq0)
                line += (
                    f", put {put_times[-1]:.2f} s ({files / put_times[-1]:.0f} files/s, "
                    f"{batches_per_put[-1]:,} index batches written)"
                )
                quiet(nodes)
            print(line, flush=True)
        tree_keys = args.warm_files + files * args.put_runs
        tree_batches = log_seq(writer.home, tree_id, me)
        rss_after_put = peak_rss_mib(writer.proc.pid)

        # -- 2. a bucket of --keys keys: seeded pending entries, flushed by the daemon at start
        bucket_id = bytes.fromhex(cli_json(writer.home, "bucket", "create", "big", "--class", CLASS)["bucket_id"])
        real_tree = work / "real"
        real_tree.mkdir()
        rng = random.Random(3)
        for i in range(REAL_FILES):
            (real_tree / f"real{i:02d}.bin").write_bytes(rng.randbytes(rng.randint(1 * KIB, 64 * KIB)))
        if cli_json(writer.home, "put", str(real_tree), "big/real/")["files"] != REAL_FILES:
            raise SystemExit("put of the real files under big/real/ failed")
        wait("the real keys' batch", lambda: pending_of(writer.home, bucket_id) == 0, 60)
        seq_before = log_seq(writer.home, bucket_id, me)
        port = writer.port
        writer.stop()
        seeded = big_keys(args.keys, args.prefix_keys, REAL_FILES)
        t = time.monotonic()
        named = seed_pending(writer.home, bucket_id, me, seeded)
        print(
            f"{len(seeded):,} pending entries (naming {named} real objects) written into the stopped writer's "
            f"index in {time.monotonic() - t:.1f} s; {REAL_FILES} keys under real/ put with the CLI before",
            flush=True,
        )
        t_start = time.monotonic()
        writer = start_daemon(writer.home, port=port, verbose=args.verbose)
        nodes[0] = writer
        served_s = time.monotonic() - t_start
        flush_s = wait(
            "the flush of the pending entries", lambda: pending_of(writer.home, bucket_id) == 0, args.timeout
        )
        cpu_flush = cpu_seconds(writer.proc.pid)
        seq_after = log_seq(writer.home, bucket_id, me)
        for d in nodes:
            wait(f"{d.home.name} to see every member online", functools.partial(all_online, d), 60)
        wait("p1 to hold the writer's newest head", lambda: head_seq(device.home, bucket_id, me) >= seq_after, 60)
        quiet(nodes)

        prefix = f"d{(len(seeded) // args.prefix_keys) // 2:03d}/"
        listed = ls_lines(cli(writer.home, "ls", f"big/{prefix}"))
        if listed != args.prefix_keys:
            raise SystemExit(f"ls big/{prefix} printed {listed} lines, not {args.prefix_keys}")
        ls_times = median_runs(args.runs, lambda: timed(writer.home, "ls", f"big/{prefix}")[0])
        ls_json_times = median_runs(args.runs, lambda: timed(writer.home, "ls", f"big/{prefix}", "--json")[0])
        floor_times = median_runs(args.runs, lambda: timed(writer.home, "status", "--node")[0])
        big_row = next(b for b in api(writer).call("GET", "/v1/buckets") if b["name"] == "big")
        if big_row["keys"] != args.keys:
            raise SystemExit(f"the writer lists {big_row['keys']} keys in big, not {args.keys}")

        # -- 3. the second device's catch-up on the big bucket; then a reader's on the put tree
        cap = cli_json(writer.home, "bucket", "share", "big", "--write")["cap"]
        quiet(nodes)
        big_r = catch_up(device, writer, cap, "big", bucket_id, args.keys, args.timeout)
        full_s, full_out = timed(device.home, "ls", "big", "--recursive", "--json")
        full_count = len(json.loads(full_out)["keys"])
        quiet(nodes)
        tree_cap = cli_json(writer.home, "bucket", "share", "tree")["cap"]
        wait("p2 to hold the tree's newest head", lambda: head_seq(member.home, tree_id, me) >= tree_batches, 60)
        tree_r = catch_up(member, writer, tree_cap, "tree", tree_id, tree_keys, args.timeout)
        time.sleep(1)
        rss = {d.home.name: peak_rss_mib(d.proc.pid) for d in nodes}
        load = max(load, os.getloadavg()[0])

        # -- report
        print()
        cp_m, put_m = statistics.median(cp_times), statistics.median(put_times)
        mb = tree_bytes / MB
        runs = f"median of {len(put_times)}" if len(put_times) > 1 else "one run"
        print(
            f"1. put DIR BUCKET/PREFIX/ of {files:,} files ({mb:.0f} MB, 1-64 KiB, {len(FOLDERS)} folders 2 deep), "
            f"class {CLASS}, {MEMBERS}-member cloud, CLI end to end ({runs}, after a warm-up put):"
        )
        print(f"   put:            {put_m:7.2f} s   {files / put_m:7.0f} files/s   {mb / put_m:7.1f} MB/s")
        print(
            f"   cp -r + sync:   {cp_m:7.2f} s   {files / cp_m:7.0f} files/s   {mb / cp_m:7.1f} MB/s   "
            f"(median of {len(cp_times)}: {', '.join(f'{x:.2f}' for x in cp_times)})"
        )
        print(f"   ratio put / (cp -r + sync), speed: {cp_m / put_m:.3f} (1/{put_m / cp_m:.0f}; no target)")
        print(
            f"   put rate over its first {max(1, files // 5):,} files / its last {max(1, files // 5):,}: "
            + ", ".join(f"{a:.0f} / {b:.0f} files/s" for a, b in put_rates)
        )
        print(
            "   daemons' CPU during the put (2 cores): "
            + "; ".join(", ".join(f"p{i} {c:.0f} s" for i, c in enumerate(cpu)) for cpu in put_cpu)
        )
        print(
            f"   index batches the put wrote into the writer's log (each a cloud object): "
            f"{', '.join(f'{b:,}' for b in batches_per_put)} for {files:,} files"
        )
        if files != args.files:
            scale = args.files / files
            print(
                f"   EXTRAPOLATED to {args.files:,} files (x{scale:.0f}, linear): put {put_m * scale:.0f} s, "
                f"cp -r + sync {cp_m * scale:.0f} s"
            )
        print(
            f"2. bucket of {args.keys:,} keys ({len(seeded):,} seeded as the writer's pending entries), "
            f"class {CLASS}: flushed as {seq_after - seq_before} batches in {served_s + flush_s:.1f} s from the "
            f"daemon's start ({flush_s:.1f} s after it served; writer CPU {cpu_flush:.1f} s since its start)"
        )
        ls_m = statistics.median(ls_times)
        print(
            f"   ls big/{prefix} ({args.prefix_keys:,} keys), CLI end to end, median of {args.runs}: "
            f"{spread(ls_times)}   target < {LS_SECONDS:.0f} s   {verdict(ls_m < LS_SECONDS)}"
        )
        print(f"     ls --json of the same:                     {spread(ls_json_times)}")
        print(f"     reference, status --node (the CLI floor):  {spread(floor_times)}")
        print(f"3. catch-up of p1 (a second device, write cap) on the {args.keys:,}-key bucket ({seq_after} batches):")
        report_catch_up(big_r, args.keys, args.timeout)
        print(f"   then ls big --recursive --json on p1: {full_count:,} keys in {full_s:.2f} s (one run)")
        print(
            f"3b. catch-up of p2 (a reader, read cap) on the bucket of figure 1 ({tree_keys:,} keys in "
            f"{tree_batches:,} batches, as put DIR wrote them):"
        )
        report_catch_up(tree_r, tree_keys, args.timeout)
        for name, peak in rss.items():
            print(f"peak RSS {name}: {peak:.0f} MiB")
        print(f"   (p0, the writer, restarted for figure 2; its peak before, after the puts: {rss_after_put:.0f} MiB)")
        print(f"load average (1 min, highest seen) {load:.2f} on {os.cpu_count()} CPUs")
        print(f"whole benchmark: {time.monotonic() - began:.0f} s")
    finally:
        for d in nodes:
            with contextlib.suppress(Exception):
                d.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
