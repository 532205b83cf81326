"""Benchmark peer-to-peer transfer on loopback against a minimal TCP + AES-GCM pair, same run.

1. One seeder, one leecher, a 1 GiB object: wall time of `peercloud get` (from its start until the
   verified file is on disk), alternating with a baseline that moves the same bytes over one TCP
   socket with AES-256-GCM into a file (+ fsync). Median of 5, MB/s and the ratio.
2. One seeder, four leechers getting at once: time until all four are done.
3. CPU seconds per GB on each side, and the daemons' peak RSS.

    .venv/bin/python bench/transfer.py [--size 1GiB] [--runs 5] [--leechers 4] [--dir DIR]
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercloud.node.process import DaemonProcess, start_daemon
from peercloud.units import format_size, parse_size

CLI = [sys.executable, "-m", "peercloud"]
CHUNK = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cli(home: Path, *args: str) -> str:
    return subprocess.run([*CLI, "--home", str(home), *args], check=True, capture_output=True, text=True).stdout


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_connected(d: DaemonProcess, peer: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p["peer_id"] == peer and p["connected"] for p in json.loads(cli(d.home, "peers", "--json"))):
            return
        time.sleep(0.05)
    raise SystemExit("peers did not connect")


# -- baseline: one TCP socket, AES-GCM per 1 MiB chunk, file to file


def _send(path: str, port: int, key: bytes) -> None:
    aead = AESGCM(key)
    with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb", buffering=0) as f:
        index = 0
        while chunk := f.read(CHUNK):
            ct = aead.encrypt(index.to_bytes(12, "big"), chunk, None)
            s.sendall(len(ct).to_bytes(4, "big") + ct)
            index += 1


def _recv_exact(conn: socket.socket, n: int, buf: bytearray) -> memoryview:
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        r = conn.recv_into(view[got:], n - got)
        if not r:
            raise EOFError
        got += r
    return view


def baseline(src: Path, dst: Path) -> float:
    key = os.urandom(32)
    aead = AESGCM(key)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    start = time.perf_counter()
    sender = mp.Process(target=_send, args=(str(src), port, key))
    sender.start()
    conn, _ = server.accept()
    buf = bytearray(CHUNK + 64)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    index = 0
    try:
        while True:
            try:
                n = int.from_bytes(_recv_exact(conn, 4, buf), "big")
            except EOFError:
                break
            os.write(fd, aead.decrypt(index.to_bytes(12, "big"), _recv_exact(conn, n, buf), None))
            index += 1
        os.fsync(fd)
    finally:
        os.close(fd)
        conn.close()
        server.close()
    sender.join()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--leechers", type=int, default=4)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    mb = size / 1e6
    base = Path(tempfile.mkdtemp(prefix="peercloud-transfer-", dir=args.dir))
    daemons: list[DaemonProcess] = []
    try:
        src = base / "object.bin"
        with open(src, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(os.urandom(CHUNK))
            f.write(os.urandom(size % CHUNK))
        seeder = start_daemon(base / "seeder")
        daemons.append(seeder)
        cap = json.loads(cli(seeder.home, "add", str(src), "--class", "replica-1", "--json"))["read_cap"]
        t_get, t_base, cpu_seed, cpu_leech, rss = [], [], [], [], []
        for i in range(args.runs):
            leecher = start_daemon(base / f"leecher{i}")
            daemons.append(leecher)
            cli(leecher.home, "peers", "add", seeder.address)
            wait_connected(leecher, seeder.peer_id)
            c0s, c0l = cpu_seconds(seeder.proc.pid), cpu_seconds(leecher.proc.pid)
            out = base / f"got{i}.bin"
            start = time.perf_counter()
            cli(leecher.home, "get", cap, "-o", str(out))
            t_get.append(time.perf_counter() - start)
            cpu_seed.append(cpu_seconds(seeder.proc.pid) - c0s)
            cpu_leech.append(cpu_seconds(leecher.proc.pid) - c0l)
            rss += [peak_rss_mib(seeder.proc.pid), peak_rss_mib(leecher.proc.pid)]
            if out.stat().st_size != size:
                raise SystemExit("wrong size received")
            out.unlink()
            leecher.stop()
            daemons.remove(leecher)
            shutil.rmtree(leecher.home)
            t_base.append(baseline(src, base / "baseline.bin"))
            (base / "baseline.bin").unlink()
            print(
                f"run {i + 1}: peercloud get {mb / t_get[-1]:.0f} MB/s, baseline {mb / t_base[-1]:.0f} MB/s", flush=True
            )
        g, b = statistics.median(t_get), statistics.median(t_base)
        print(f"\none seeder -> one leecher, {format_size(size)}, median of {args.runs}:")
        print(f"  peercloud get (CLI start to verified file on disk): {mb / g:7.0f} MB/s  ({g:.2f} s)")
        print(f"  baseline: 1 TCP socket + AES-256-GCM, to file + fsync: {mb / b:7.0f} MB/s  ({b:.2f} s)")
        print(f"  ratio peercloud / baseline = {b / g:.2f}   (target >= 0.5; absolute target >= 700 MB/s)")
        gb = size / 1e9
        print(
            f"  CPU per GB: seeder {statistics.median(cpu_seed) / gb:.2f} s, "
            f"leecher daemon {statistics.median(cpu_leech) / gb:.2f} s"
        )
        print(f"  peak RSS of a daemon during transfers: {max(rss):.0f} MiB (target <= 300 MiB)")

        if args.leechers:
            leechers = [start_daemon(base / f"swarm{i}") for i in range(args.leechers)]
            daemons += leechers
            for lc in leechers:
                cli(lc.home, "peers", "add", seeder.address)
                wait_connected(lc, seeder.peer_id)
            start = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [*CLI, "--home", str(lc.home), "get", cap, "-o", str(base / f"s{i}.bin")], stdout=subprocess.DEVNULL
                )
                for i, lc in enumerate(leechers)
            ]
            codes = [p.wait() for p in procs]
            elapsed = time.perf_counter() - start
            if any(codes):
                raise SystemExit(f"a leecher failed: {codes}")
            print(
                f"\none seeder -> {args.leechers} leechers at once, {format_size(size)} each: "
                f"all done in {elapsed:.2f} s ({args.leechers * mb / elapsed:.0f} MB/s aggregate; "
                f"libtorrent took about 7.1 s for 4 x 1 GiB on the reference machine)"
            )
            print(
                f"  peak RSS: seeder {peak_rss_mib(seeder.proc.pid):.0f} MiB, "
                f"leechers {max(peak_rss_mib(lc.proc.pid) for lc in leechers):.0f} MiB"
            )
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
