"""Peer-to-peer transfer on loopback, next to a bare TCP + AES-GCM pair and to libtorrent 2.1, same run.

What issue 13 ("Speed and memory") asks of the transfer path, printed with each figure's same-run
reference and PASS/MISS against its target (medians of --runs, 5 by default):

1. One peer to one peer, 1 GiB: `peercloud get` through the real CLI, from its start until the
   verified file is on disk, from a seeder daemon (the object added there) to a fresh leecher
   daemon. Next to it, alternating round by round:
   - the bare pair: one TCP socket between two processes, AES-256-GCM per 1 MiB record
     (encrypt_into / decrypt_into reused buffers), records written with os.pwrite into a
     preallocated file, then fsync;
   - libtorrent 2.1 (the PyPI wheel, the `bench` extra): one session seeding the same file,
     another downloading it, separate processes, TCP only (uTP off), encryption off, no
     DHT/LSD/UPnP/NAT-PMP, 1 MiB pieces (a v1+v2 hybrid torrent, libtorrent's default), the
     downloader connected to the seeder by hand; timed from adding the torrent until it is
     finished, its writes flushed and the file fsynced.
   Targets: peercloud >= 0.7 x the bare pair and >= 1.5 x libtorrent (in speed); CPU seconds per
   GB (utime + stime from /proc) of the leecher daemon <= 1.2 and of the seeder daemon <= 0.6.
2. One seeder to --leechers (4) fetcher daemons getting at once (the fetchers are peers of each
   other too): time until all hold a verified copy, the CPU seconds of every daemon, the target
   wall <= 1.25 x (CPU seconds of all daemons / 2 cores), and the bytes the seeder sent (its
   bytes_out) against the leechers x size delivered (target <= half). libtorrent with the same
   shape (downloaders connected to the seeder and to each other), for reference.
3. In a cloud of eight members, the same size as ec-4+2 on six holders and as replica-3 on three
   (placement, audits and the owner's release of extra copies awaited, untimed): the eighth
   member, whose offer is too small to be made a holder, gets each; MB/s.
4. Peak RSS (VmHWM) of every daemon started, target <= 200 MiB each. `--big 4GiB` adds one more
   one-to-one get of that size (fresh seeder and leecher) and prints their peak RSS.

Warm-up first: a file larger than the work is written and deleted (fresh memory is slow to touch
the first time on some VMs), and every measured path runs once untimed; those first copies are
also hashed against the source. Every daemon and libtorrent process started is stopped, on
failure too. Needs libtorrent: `.venv/bin/pip install -e '.[bench]'` (`make bench` does it).

    .venv/bin/python bench/transfer.py [--size 1GiB] [--runs 5] [--leechers 4] [--dir DIR] [--big 4GiB]
                                       [--no-cloud]
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercloud.cli.client import DaemonClient
from peercloud.node.home import NodeHome
from peercloud.node.process import DaemonProcess, start_daemon
from peercloud.units import format_size, parse_size

CLI = [sys.executable, "-m", "peercloud"]
CHUNK = 1024 * 1024
TAG = 16
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
GB = 1e9
OFFER = 64 * 2**30
FETCHER_OFFER = 2**20
# targets of issue 13
VS_BARE = 0.7
VS_LIBTORRENT = 1.5
LEECHER_CPU_PER_GB = 1.2
SEEDER_CPU_PER_GB = 0.6
SWARM_EFFICIENCY = 1.25
CORES = 2
RSS_MIB = 200.0
PLACEMENT_TIMEOUT = 420.0


def cli(home: Path, *args: str) -> str:
    """Run the peercloud CLI against a home; its stdout (SystemExit with its stderr when it fails)."""
    done = subprocess.run([*CLI, "--home", str(home), *args], capture_output=True, text=True)
    if done.returncode:
        log = home / "daemon.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no daemon.log)"
        raise SystemExit(
            f"peercloud {args[0]} failed ({done.returncode}) on {home.name}: {done.stderr[-2000:]}\n"
            f"its daemon.log ends:\n{tail}"
        )
    return done.stdout


def api(d: DaemonProcess) -> DaemonClient:
    """The daemon's local API client (for setup and polling; every timed get goes through the CLI)."""
    client = DaemonClient.find(NodeHome(d.home))
    if client is None:
        raise SystemExit(f"no daemon answers for {d.home}")
    return client


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu() -> float:
    """CPU seconds of the children reaped so far (the timed CLI processes, when read around them)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(what: str, check: Callable[[], bool], timeout: float = 60.0, every: float = 0.05) -> float:
    """Poll until check() holds; seconds waited; SystemExit after timeout."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def median(values: list[float]) -> float:
    """Median of the timed rounds."""
    return statistics.median(values)


def file_hash(path: Path) -> bytes:
    """BLAKE3 of a file, read in 8 MiB pieces."""
    h = blake3.blake3()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.digest()


def check_copy(path: Path, size: int, digest: bytes | None, what: str) -> None:
    """The copy has the source's size, and its hash when one is given."""
    got = path.stat().st_size
    if got != size:
        raise SystemExit(f"{what}: {got} bytes on disk, expected {size}")
    if digest is not None and file_hash(path) != digest:
        raise SystemExit(f"{what}: content differs from the source")


def make_source(path: Path, size: int) -> bytes:
    """Write `size` random bytes (fsynced); their BLAKE3."""
    h = blake3.blake3()
    with open(path, "wb", buffering=0) as f:
        left = size
        while left:
            chunk = os.urandom(min(8 * MIB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
        os.fsync(f.fileno())
    return h.digest()


def warm_up_memory(work: Path, size: int) -> float:
    """Write and delete a file of `size` bytes, untimed: fresh memory is slow to touch the first time."""
    start = time.perf_counter()
    buf = os.urandom(8 * MIB)
    path = work / "warm-up.bin"
    with open(path, "wb", buffering=0) as f:
        for _ in range(max(1, size // len(buf))):
            f.write(buf)
    path.unlink()
    return time.perf_counter() - start


@dataclass
class Fleet:
    """Every daemon this run started: stopped in the end whatever happens; peak RSS noted at stop."""

    base: Path
    live: list[DaemonProcess] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=dict)
    group_of: dict[int, str] = field(default_factory=dict)

    def start(self, name: str, group: str) -> DaemonProcess:
        """Start a daemon with a new home under the run's folder."""
        d = start_daemon(self.base / name)
        self.live.append(d)
        self.group_of[d.proc.pid] = group
        return d

    def start_many(self, names: list[str], group: str) -> list[DaemonProcess]:
        """Start several daemons side by side (each spends a second or so importing)."""
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(lambda n: self.start(n, group), names))

    def note_rss(self, d: DaemonProcess) -> None:
        """Record the daemon's peak RSS under its group."""
        peak = peak_rss_mib(d.proc.pid) if d.proc.poll() is None else 0.0
        self.rss.setdefault(self.group_of[d.proc.pid], []).append(peak)

    def stop(self, d: DaemonProcess, remove_home: bool = True) -> None:
        """Note its peak RSS, stop it, forget its home."""
        self.note_rss(d)
        self.live.remove(d)
        try:
            d.stop()
        finally:
            if remove_home:
                shutil.rmtree(d.home, ignore_errors=True)

    def stop_all(self) -> None:
        """Stop whatever still runs (on failure too)."""
        for d in list(self.live):
            try:
                self.stop(d, remove_home=False)
            except Exception as e:  # keep stopping the others
                print(f"stopping {d.home.name}: {e!r}", file=sys.stderr)


def connect(a: DaemonProcess, b: DaemonProcess) -> None:
    """a remembers b and dials it."""
    api(a).call("POST", "/v1/peers", {"peer": b.address})


def connected(d: DaemonProcess, peers: list[DaemonProcess]) -> bool:
    """d has a live link to each of `peers`."""
    up = {p["peer_id"] for p in api(d).call("GET", "/v1/peers") if p["connected"]}
    return all(p.peer_id in up for p in peers)


def bytes_out(d: DaemonProcess) -> int:
    """Bytes the daemon has sent to peers so far."""
    return int(api(d).call("GET", "/v1/node")["bytes_out"])


# -- the bare pair: one TCP socket, AES-256-GCM per 1 MiB record, pwrite into a preallocated file


def _send(path: str, port: int, key: bytes) -> None:
    """Sender process: read the file 1 MiB at a time, seal each record into one reused buffer, send it."""
    aead = AESGCM(key)
    plain = bytearray(CHUNK)
    record = bytearray(4 + CHUNK + TAG)
    with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb", buffering=0) as f:
        index = 0
        while n := f.readinto(plain):
            record[:4] = (n + TAG).to_bytes(4, "big")
            aead.encrypt_into(
                index.to_bytes(12, "big"), memoryview(plain)[:n], None, memoryview(record)[4 : 4 + n + TAG]
            )
            s.sendall(memoryview(record)[: 4 + n + TAG])
            index += 1


def _recv_exact(conn: socket.socket, view: memoryview) -> bool:
    """Fill `view` from the socket; False on a clean end before its first byte."""
    got = 0
    while got < len(view):
        r = conn.recv_into(view[got:])
        if not r:
            if got == 0:
                return False
            raise EOFError("short record")
        got += r
    return True


def bare_pair(src: Path, dst: Path) -> float:
    """Move src to dst through the bare pair; seconds from the sender's start to the fsynced file."""
    key = os.urandom(32)
    aead = AESGCM(key)
    size = src.stat().st_size
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    start = time.perf_counter()
    sender = mp.get_context("fork").Process(target=_send, args=(str(src), port, key))
    sender.start()
    try:
        conn, _ = server.accept()
        header = bytearray(4)
        record = bytearray(CHUNK + TAG)
        plain = bytearray(CHUNK)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, max(size, 1))
            index = 0
            while _recv_exact(conn, memoryview(header)):
                n = int.from_bytes(header, "big")
                _recv_exact(conn, memoryview(record)[:n])
                out = memoryview(plain)[: n - TAG]
                aead.decrypt_into(index.to_bytes(12, "big"), memoryview(record)[:n], None, out)
                os.pwrite(fd, out, index * CHUNK)
                index += 1
            os.fsync(fd)
        finally:
            os.close(fd)
            conn.close()
        elapsed = time.perf_counter() - start
    finally:
        server.close()
        sender.join(30)
        if sender.is_alive():
            sender.kill()
            sender.join()
    if sender.exitcode != 0:
        raise SystemExit(f"bare pair: the sender exited with {sender.exitcode}")
    return elapsed


# -- libtorrent 2.1: each session in its own process (this file run with --lt-worker)


def lt_settings() -> dict[str, Any]:
    """Loopback, TCP only, no encryption, no DHT/LSD/UPnP/NAT-PMP; several peers on one IP allowed."""
    import libtorrent as lt

    disabled = int(lt.enc_policy.pe_disabled)
    return {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "out_enc_policy": disabled,
        "in_enc_policy": disabled,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": int(
            lt.alert.category_t.status_notification
            | lt.alert.category_t.error_notification
            | lt.alert.category_t.storage_notification
        ),
    }


def make_torrent(src: Path, out: Path) -> None:
    """A torrent of src with 1 MiB pieces (libtorrent's default format: v1 + v2 hybrid)."""
    import libtorrent as lt

    ct = lt.create_torrent(lt.list_files(str(src)), piece_size=1 << 20)
    lt.set_piece_hashes(ct, str(src.parent))
    out.write_bytes(lt.bencode(ct.generate()))


def _reply(msg: dict[str, Any]) -> None:
    """Worker side: one JSON line to the bench."""
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _await_alert(ses: Any, kinds: tuple[type, ...], timeout: float) -> None:
    """Worker side: wait for an alert of one of `kinds`; error alerts and timeouts end the worker."""
    import libtorrent as lt

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, kinds):
                return
            if isinstance(a, lt.file_error_alert | lt.torrent_error_alert | lt.hash_failed_alert):
                _reply({"error": a.message()})
                sys.exit(1)
    _reply({"error": f"no {kinds[0].__name__} within {timeout:.0f} s"})
    sys.exit(1)


def lt_worker(role: str, torrent: str, folder: str) -> None:
    """A libtorrent session: `seed` the file in folder, or `get` it into folder when told to; JSON lines."""
    import libtorrent as lt

    ses = lt.session(lt_settings())
    ti = lt.torrent_info(torrent)
    params = lt.add_torrent_params()
    params.ti = ti
    params.save_path = folder
    if role == "seed":
        h = ses.add_torrent(params)
        deadline = time.monotonic() + 600
        while not h.status().is_seeding:
            if time.monotonic() > deadline or h.status().errc.value():
                _reply({"error": f"seeder did not check its file: {h.status().errc.message()}"})
                sys.exit(1)
            time.sleep(0.05)
        _reply({"port": ses.listen_port()})
        for line in sys.stdin:
            if json.loads(line)["op"] == "stats":
                _reply({"uploaded": h.status().total_payload_upload})
        return
    _reply({"port": ses.listen_port()})
    go = json.loads(sys.stdin.readline())
    start = time.perf_counter()
    h = ses.add_torrent(params)
    for port in go["peers"]:
        h.connect_peer(("127.0.0.1", port))
    _await_alert(ses, (lt.torrent_finished_alert,), 900)
    h.flush_cache()
    _await_alert(ses, (lt.cache_flushed_alert,), 120)
    fd = os.open(os.path.join(folder, ti.layout().file_path(0)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _reply({"seconds": time.perf_counter() - start})
    for _ in sys.stdin:  # keep serving the other downloaders until the bench closes stdin
        pass


class LtProc:
    """A libtorrent worker process, spoken to by JSON lines on its stdin and stdout."""

    def __init__(self, role: str, torrent: Path, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--lt-worker", role, str(torrent), str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self.pending = b""
        try:
            self.port = int(self.read(600)["port"])
        except BaseException:
            self.stop()
            raise

    def send(self, msg: dict[str, Any]) -> None:
        """One line to the worker."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        """The worker's next line; SystemExit on its error, its exit or a timeout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"libtorrent worker: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    raise SystemExit(f"libtorrent worker exited ({self.proc.wait()})")
                self.pending += data
        line, self.pending = self.pending.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        if "error" in msg:
            raise SystemExit(f"libtorrent worker: {msg['error']}")
        return msg

    def cpu(self) -> float:
        """CPU seconds of the worker so far."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Close its stdin (it exits); kill it if it does not within 10 s."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def lt_procs() -> Iterator[list[LtProc]]:
    """A list to put libtorrent workers in; all stopped on the way out."""
    procs: list[LtProc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def lt_swarm(torrent: Path, seeder: LtProc, work: Path, count: int) -> tuple[float, float, float]:
    """`count` libtorrent downloaders at once: wall s until the last file is fsynced, CPU s, seeder's upload."""
    folders = [work / f"lt-get{i}" for i in range(count)]
    with lt_procs() as procs:
        for f in folders:
            procs.append(LtProc("get", torrent, f))
        seeder.send({"op": "stats"})
        up0 = seeder.read(30)["uploaded"]
        cpu0 = sum(p.cpu() for p in procs) + seeder.cpu()
        start = time.perf_counter()
        for i, p in enumerate(procs):
            p.send({"op": "go", "peers": [seeder.port, *(q.port for q in procs[:i])]})
        for p in procs:
            p.read(900)
        wall = time.perf_counter() - start
        cpu = sum(p.cpu() for p in procs) + seeder.cpu() - cpu0
        seeder.send({"op": "stats"})
        uploaded = seeder.read(30)["uploaded"] - up0
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)
    return wall, cpu, uploaded


# -- the report


@dataclass
class Summary:
    """Every figure with its reference or target, printed as a table at the end."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, what: str, figure: str, target: str, ok: bool | None = None) -> None:
        """One row; ok None for a figure without a target."""
        self.rows.append((what, figure, target, "" if ok is None else verdict(ok)))

    def print(self, title: str) -> None:
        """The table."""
        widths = [max(len(r[i]) for r in [("figure", "", "target or reference", ""), *self.rows]) for i in range(3)]
        print(f"\n{title}")
        for what, figure, target, mark in [("", "figure", "target or reference", ""), *self.rows]:
            print(f"  {what:<{widths[0]}}  {figure:<{widths[1]}}  {target:<{widths[2]}}  {mark}".rstrip())


def mbps(size: int, seconds: float) -> float:
    """MB/s."""
    return size / seconds / 1e6


def gib(n: float) -> str:
    """Bytes as GiB, two decimals."""
    return f"{n / 2**30:.2f} GiB"


# -- 1. one peer to one peer


@dataclass
class OneToOne:
    """Timed rounds of the one-to-one comparison."""

    get: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    lt: list[float] = field(default_factory=list)
    seeder_cpu: list[float] = field(default_factory=list)
    leecher_cpu: list[float] = field(default_factory=list)
    cli_cpu: list[float] = field(default_factory=list)
    lt_seed_cpu: list[float] = field(default_factory=list)
    lt_get_cpu: list[float] = field(default_factory=list)


def peercloud_get(
    fleet: Fleet, seeder: DaemonProcess, cap: str, out: Path, name: str
) -> tuple[float, float, float, float]:
    """A fresh leecher's CLI get from the seeder: seconds; CPU s of the seeder, the leecher and the CLI."""
    leecher = fleet.start(name, "1:1 leechers")
    connect(leecher, seeder)
    wait("the leecher to connect", lambda: connected(leecher, [seeder]), 30)
    s0, l0, c0 = cpu_seconds(seeder.proc.pid), cpu_seconds(leecher.proc.pid), children_cpu()
    start = time.perf_counter()
    cli(leecher.home, "get", cap, "-o", str(out))
    elapsed = time.perf_counter() - start
    result = (
        elapsed,
        cpu_seconds(seeder.proc.pid) - s0,
        cpu_seconds(leecher.proc.pid) - l0,
        children_cpu() - c0,
    )
    fleet.stop(leecher)
    return result


def one_to_one(
    fleet: Fleet,
    seeder: DaemonProcess,
    cap: str,
    src: Path,
    digest: bytes,
    torrent: Path,
    lt_seeder: LtProc,
    runs: int,
    work: Path,
) -> OneToOne:
    """Round 0 untimed (and hash-checked), then `runs` rounds of peercloud get, bare pair, libtorrent."""
    size = src.stat().st_size
    r = OneToOne()
    for i in range(runs + 1):
        check = digest if i == 0 else None
        out = work / "got.bin"
        t_get, c_seed, c_leech, c_cli = peercloud_get(fleet, seeder, cap, out, f"leecher{i}")
        check_copy(out, size, check, "peercloud get")
        out.unlink()
        t_bare = bare_pair(src, work / "bare.bin")
        check_copy(work / "bare.bin", size, check, "bare pair")
        (work / "bare.bin").unlink()
        with lt_procs() as procs:
            procs.append(LtProc("get", torrent, work / "lt-get"))
            s0, g0 = lt_seeder.cpu(), procs[0].cpu()
            procs[0].send({"op": "go", "peers": [lt_seeder.port]})
            t_lt = float(procs[0].read(900)["seconds"])
            c_lt_seed, c_lt_get = lt_seeder.cpu() - s0, procs[0].cpu() - g0
        check_copy(work / "lt-get" / src.name, size, check, "libtorrent")
        shutil.rmtree(work / "lt-get")
        label = "warm-up" if i == 0 else f"run {i}"
        print(
            f"  {label:>7}: peercloud get {t_get:6.2f} s ({mbps(size, t_get):5.0f} MB/s), bare pair {t_bare:5.2f} s, "
            f"libtorrent {t_lt:5.2f} s; CPU s: seeder {c_seed:.2f}, leecher {c_leech:.2f}, get CLI {c_cli:.2f}",
            flush=True,
        )
        if i == 0:
            continue
        r.get.append(t_get)
        r.bare.append(t_bare)
        r.lt.append(t_lt)
        r.seeder_cpu.append(c_seed)
        r.leecher_cpu.append(c_leech)
        r.cli_cpu.append(c_cli)
        r.lt_seed_cpu.append(c_lt_seed)
        r.lt_get_cpu.append(c_lt_get)
    return r


def report_one_to_one(r: OneToOne, size: int, runs: int, summary: Summary) -> None:
    """Medians, ratios and verdicts of part 1."""
    g, b, t = median(r.get), median(r.bare), median(r.lt)
    gb = size / GB
    seed_cpu, leech_cpu = median(r.seeder_cpu) / gb, median(r.leecher_cpu) / gb
    print(f"\n1. one peer -> one peer, {format_size(size)}, median of {runs}:")
    print(f"  peercloud get (CLI start to verified file on disk): {g:6.2f} s  {mbps(size, g):6.0f} MB/s")
    print(f"  bare pair (1 TCP socket, AES-256-GCM, pwrite, fsync): {b:6.2f} s  {mbps(size, b):6.0f} MB/s")
    print(f"  libtorrent 2.1 (TCP, no encryption, 1 MiB pieces):   {t:6.2f} s  {mbps(size, t):6.0f} MB/s")
    print(f"  peercloud / bare pair = {b / g:.2f} x   (target >= {VS_BARE}: {verdict(b / g >= VS_BARE)})")
    print(f"  peercloud / libtorrent = {t / g:.2f} x   (target >= {VS_LIBTORRENT}: {verdict(t / g >= VS_LIBTORRENT)})")
    print(
        f"  CPU s per GB: leecher daemon {leech_cpu:.2f} (target <= {LEECHER_CPU_PER_GB}: "
        f"{verdict(leech_cpu <= LEECHER_CPU_PER_GB)}), seeder daemon {seed_cpu:.2f} (target <= "
        f"{SEEDER_CPU_PER_GB}: {verdict(seed_cpu <= SEEDER_CPU_PER_GB)}); get CLI process "
        f"{median(r.cli_cpu) / gb:.2f}"
    )
    print(
        f"  libtorrent CPU s per GB, for reference: downloader {median(r.lt_get_cpu) / gb:.2f}, "
        f"seeder {median(r.lt_seed_cpu) / gb:.2f}"
    )
    summary.add("1:1 peercloud get", f"{g:.2f} s {mbps(size, g):.0f} MB/s", "")
    summary.add("1:1 bare pair (reference)", f"{b:.2f} s {mbps(size, b):.0f} MB/s", "")
    summary.add("1:1 libtorrent (reference)", f"{t:.2f} s {mbps(size, t):.0f} MB/s", "")
    summary.add("1:1 peercloud vs bare pair", f"{b / g:.2f} x", f">= {VS_BARE} x", b / g >= VS_BARE)
    summary.add("1:1 peercloud vs libtorrent", f"{t / g:.2f} x", f">= {VS_LIBTORRENT} x", t / g >= VS_LIBTORRENT)
    summary.add(
        "1:1 leecher daemon CPU",
        f"{leech_cpu:.2f} s/GB",
        f"<= {LEECHER_CPU_PER_GB} s/GB",
        leech_cpu <= LEECHER_CPU_PER_GB,
    )
    summary.add(
        "1:1 seeder daemon CPU", f"{seed_cpu:.2f} s/GB", f"<= {SEEDER_CPU_PER_GB} s/GB", seed_cpu <= SEEDER_CPU_PER_GB
    )


# -- 2. one seeder, several fetchers at once


@dataclass
class SwarmRound:
    """One swarm round's figures."""

    wall: float
    each: list[float]
    cpu: dict[str, float]
    cli_cpu: float
    seeder_out: int
    lt_wall: float
    lt_cpu: float
    lt_uploaded: float


def peercloud_swarm(
    fleet: Fleet, seeder: DaemonProcess, cap: str, work: Path, count: int, digest: bytes | None, size: int, tag: str
) -> tuple[float, list[float], dict[str, float], float, int]:
    """Fresh fetchers, meshed, get at once: wall s, each get's s, CPU s per daemon and of the CLIs, seeder's out."""
    fetchers = fleet.start_many([f"swarm{tag}-{i}" for i in range(count)], "swarm fetchers")
    try:
        for i, f in enumerate(fetchers):
            for other in [seeder, *fetchers[:i]]:
                connect(f, other)
        for f in fetchers:
            wait("the fetchers to connect", lambda f=f: connected(f, [seeder, *(o for o in fetchers if o is not f)]))
        daemons = {"seeder": seeder, **{f"fetcher{i + 1}": f for i, f in enumerate(fetchers)}}
        cpu0 = {k: cpu_seconds(d.proc.pid) for k, d in daemons.items()}
        out0, cli0 = bytes_out(seeder), children_cpu()
        outs = [work / f"swarm{i}.bin" for i in range(count)]
        errs = [(work / f"swarm{i}.err").open("w+") for i in range(count)]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*CLI, "--home", str(f.home), "get", cap, "-o", str(o)], stdout=subprocess.DEVNULL, stderr=e
            )
            for f, o, e in zip(fetchers, outs, errs, strict=True)
        ]
        each: list[float] = [0.0] * count
        try:
            while not all(each):
                for i, p in enumerate(procs):
                    if not each[i] and p.poll() is not None:
                        each[i] = time.perf_counter() - start
                if time.perf_counter() - start > 1800:
                    raise SystemExit("the swarm's gets took over 30 minutes")
                time.sleep(0.01)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        wall = max(each)
        cpu = {k: cpu_seconds(d.proc.pid) - cpu0[k] for k, d in daemons.items()}
        sent = bytes_out(seeder) - out0
        cli_cpu = children_cpu() - cli0
        failed = []
        for i, (p, e) in enumerate(zip(procs, errs, strict=True)):
            e.seek(0)
            if p.returncode:
                failed.append((i, p.returncode, e.read()[-500:]))
            e.close()
        if failed:
            raise SystemExit(f"a fetcher's get failed: {failed}")
        for o in outs:
            check_copy(o, size, digest, "swarm get")
            o.unlink()
    finally:
        for f in fetchers:
            if f in fleet.live:
                fleet.stop(f)
    return wall, each, cpu, cli_cpu, sent


def swarm(
    fleet: Fleet,
    seeder: DaemonProcess,
    cap: str,
    digest: bytes,
    torrent: Path,
    lt_seeder: LtProc,
    size: int,
    runs: int,
    count: int,
    work: Path,
) -> list[SwarmRound]:
    """Round 0 untimed (hash-checked), then `runs` rounds: peercloud, then libtorrent, same shape."""
    rounds = []
    for i in range(runs + 1):
        wall, each, cpu, cli_cpu, sent = peercloud_swarm(
            fleet, seeder, cap, work, count, digest if i == 0 else None, size, str(i)
        )
        lt_wall, lt_cpu, lt_up = lt_swarm(torrent, lt_seeder, work, count)
        label = "warm-up" if i == 0 else f"run {i}"
        total = sum(cpu.values())
        print(
            f"  {label:>7}: peercloud all {count} in {wall:6.2f} s (each "
            + ", ".join(f"{e:.1f}" for e in each)
            + f"), CPU s {total:.1f} ("
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            + f"; get CLIs {cli_cpu:.1f}), seeder sent {gib(sent)}; "
            f"libtorrent {lt_wall:5.2f} s (CPU {lt_cpu:.1f} s, seeder sent {gib(lt_up)})",
            flush=True,
        )
        if i:
            rounds.append(SwarmRound(wall, each, cpu, cli_cpu, sent, lt_wall, lt_cpu, lt_up))
    return rounds


def report_swarm(rounds: list[SwarmRound], size: int, count: int, summary: Summary) -> None:
    """Medians, efficiency and upload share of part 2."""
    wall = median([r.wall for r in rounds])
    total = median([sum(r.cpu.values()) for r in rounds])
    eff = median([r.wall / (sum(r.cpu.values()) / CORES) for r in rounds])
    sent = median([float(r.seeder_out) for r in rounds])
    lt_wall = median([r.lt_wall for r in rounds])
    delivered = count * size
    print(f"\n2. one seeder -> {count} fetchers at once, {format_size(size)} each, median of {len(rounds)}:")
    print(
        f"  peercloud: all {count} verified copies in {wall:.2f} s ({mbps(delivered, wall):.0f} MB/s delivered); "
        f"libtorrent, same shape: {lt_wall:.2f} s ({mbps(delivered, lt_wall):.0f} MB/s) -> peercloud "
        f"{lt_wall / wall:.2f} x libtorrent"
    )
    print("  CPU s per daemon: " + ", ".join(f"{k} {median([r.cpu[k] for r in rounds]):.2f}" for k in rounds[0].cpu))
    print(
        f"  efficiency: wall / (CPU s of all daemons / {CORES} cores) = {wall:.2f} / ({total:.2f} / {CORES}) -> "
        f"median per run {eff:.2f} (target <= {SWARM_EFFICIENCY}: {verdict(eff <= SWARM_EFFICIENCY)}); "
        f"the get CLIs used {median([r.cli_cpu for r in rounds]):.2f} CPU s more"
    )
    print(
        f"  seeder sent {gib(sent)} of the {gib(delivered)} delivered "
        f"(target <= {gib(delivered / 2)}: {verdict(sent <= delivered / 2)}); libtorrent's seeder "
        f"uploaded {gib(median([r.lt_uploaded for r in rounds]))} (payload)"
    )
    summary.add(f"1:{count} peercloud, all copies", f"{wall:.2f} s", f"libtorrent {lt_wall:.2f} s")
    summary.add(
        f"1:{count} wall / (daemon CPU s / {CORES})", f"{eff:.2f}", f"<= {SWARM_EFFICIENCY}", eff <= SWARM_EFFICIENCY
    )
    summary.add(f"1:{count} seeder sent", gib(sent), f"<= {gib(delivered / 2)}", sent <= delivered / 2)


# -- 3. from a cloud's holders: ec-4+2 on six, replica-3 on three


def proved_holders(d: DaemonProcess, oid: str) -> tuple[int, int, int]:
    """Holders with proved blocks, proved blocks in all, the object's blocks; as `d` sees them."""
    try:
        s = api(d).call("GET", f"/v1/objects/{oid}/status")
    except Exception:  # not known there yet
        return 0, 0, 1
    proved = [h for h in s["holders"] if h["confirmed"]]
    return len(proved), sum(len(h["confirmed"]) for h in proved), int(s["total_blocks"])


def settled(d: DaemonProcess, oid: str, holders: int, copies: int) -> bool:
    """`holders` proved holders, every block proved exactly `copies` times (no extra copies left)."""
    n, proved, total = proved_holders(d, oid)
    return n == holders and proved == copies * total


def from_holders(
    fleet: Fleet, src: Path, digest: bytes, size: int, runs: int, summary: Summary, one_to_one_get: float | None
) -> None:
    """Seven members hold the file as ec-4+2 and as replica-3; an eighth, offering no room, gets each."""
    print("\n3. a cloud's holders -> one member: ec-4+2 on six holders, replica-3 on three")
    members = fleet.start_many([f"member{i}" for i in range(8)], "cloud members")
    admin, fetcher = members[0], members[-1]
    api(admin).call("POST", "/v1/cloud", {"name": "bench", "offer": OFFER, "tags": []})
    for d in members[1:]:
        token = api(admin).call("POST", "/v1/cloud/invite", {})["token"]
        offer = FETCHER_OFFER if d is fetcher else OFFER  # too small for a column: never picked as a holder
        api(d).call("POST", "/v1/cloud/join", {"token": token, "offer": offer, "tags": []})
    for d in (admin, fetcher):
        wait(
            "the members to be online",
            lambda d=d: sum(x["online"] for x in api(d).call("GET", "/v1/cloud")["members"]) == len(members),
            60,
        )
    objects = {}
    for cls, holders, copies in (("ec-4+2", 6, 1), ("replica-3", 3, 3)):
        added = api(admin).stream("/v1/objects", {"path": str(src), "storage_class": cls}, None)
        objects[cls] = (added["object_id"], added["read_cap"], holders, copies)
    start = time.monotonic()
    last = 0.0
    while not all(settled(admin, oid, h, c) for oid, _, h, c in objects.values()):
        if time.monotonic() - start > PLACEMENT_TIMEOUT:
            break
        if time.monotonic() - last > 30:
            last = time.monotonic()
            states = []
            for cls, (oid, _, _, _) in objects.items():
                n, proved, total = proved_holders(admin, oid)
                states.append(f"{cls}: {n} holders, {proved} proved blocks ({total} per copy)")
            print(f"  placing ({time.monotonic() - start:.0f} s): " + "; ".join(states), flush=True)
        time.sleep(1)
    placed = time.monotonic() - start
    unsettled = [cls for cls, (oid, _, h, c) in objects.items() if not settled(admin, oid, h, c)]
    print(
        f"  placed, proved, and the owner's extra copies released (untimed): {placed:.0f} s after the adds", flush=True
    )
    if unsettled:
        print(
            f"  NOTE: not settled within {PLACEMENT_TIMEOUT:.0f} s: {', '.join(unsettled)} (holders and proved "
            "blocks above); measured anyway, so the owner's extra copies may serve part of those gets"
        )
    for cls, (oid, _, h, _) in objects.items():
        placed_on = min(h, proved_holders(admin, oid)[0])  # placement may have put two columns on one
        wait(
            f"the fetcher to see the {cls} holders",
            lambda oid=oid, n=placed_on: proved_holders(fetcher, oid)[0] >= n,
            120,
        )
        print(f"  {cls}: {placed_on} holders", flush=True)
    results: dict[str, list[float]] = {cls: [] for cls in objects}
    cpu: dict[str, list[float]] = {cls: [] for cls in objects}
    for i in range(runs + 1):
        line = []
        for cls, (_, cap, _, _) in objects.items():
            out = fleet.base / "cloud-got.bin"
            c0 = cpu_seconds(fetcher.proc.pid)
            start_get = time.perf_counter()
            cli(fetcher.home, "get", cap, "-o", str(out))
            elapsed = time.perf_counter() - start_get
            used = cpu_seconds(fetcher.proc.pid) - c0
            check_copy(out, size, digest if i == 0 else None, f"{cls} get")
            out.unlink()
            line.append(f"{cls} {elapsed:.2f} s ({mbps(size, elapsed):.0f} MB/s, fetcher CPU {used:.2f} s)")
            if i:
                results[cls].append(elapsed)
                cpu[cls].append(used)
        print(f"  {'warm-up' if i == 0 else f'run {i}':>7}: " + ", ".join(line), flush=True)
    for cls, (oid, _, _, _) in objects.items():
        if proved_holders(admin, oid)[0] and fetcher.peer_id in {
            h["peer_id"] for h in api(admin).call("GET", f"/v1/objects/{oid}/status")["holders"]
        }:
            print(f"  NOTE: the fetching member became a holder of the {cls} object during the run")
    ref = f"1:1 get {mbps(size, one_to_one_get):.0f} MB/s" if one_to_one_get else ""
    print(f"  median of {runs}:")
    for cls, times in results.items():
        t = median(times)
        per_gb = median(cpu[cls]) / (size / GB)
        print(f"    {cls}: {t:.2f} s, {mbps(size, t):.0f} MB/s; fetcher daemon {per_gb:.2f} CPU s/GB   ({ref})")
        summary.add(f"{cls} from its holders", f"{mbps(size, t):.0f} MB/s", ref)
    for d in members:
        fleet.stop(d)


# -- 4. a bigger file, for peak RSS


def big_get(fleet: Fleet, work: Path, size: int, summary: Summary) -> None:
    """One extra one-to-one get of `size` bytes (fresh seeder and leecher); peak RSS of both daemons."""
    print(f"\n--big: one peer -> one peer, {format_size(size)}")
    src = work / "big.bin"
    digest = make_source(src, size)
    seeder = fleet.start("big-seeder", "big seeder")
    cap = json.loads(cli(seeder.home, "add", str(src), "--class", "replica-1", "--json"))["read_cap"]
    src.unlink()
    leecher = fleet.start("big-leecher", "big leecher")
    connect(leecher, seeder)
    wait("the leecher to connect", lambda: connected(leecher, [seeder]), 30)
    out = work / "big-got.bin"
    start = time.perf_counter()
    cli(leecher.home, "get", cap, "-o", str(out))
    elapsed = time.perf_counter() - start
    check_copy(out, size, digest, "big get")
    out.unlink()
    rs, rl = peak_rss_mib(seeder.proc.pid), peak_rss_mib(leecher.proc.pid)
    print(
        f"  get {elapsed:.2f} s ({mbps(size, elapsed):.0f} MB/s); peak RSS: seeder {rs:.0f} MiB, leecher {rl:.0f} MiB"
    )
    ok = max(rs, rl) <= RSS_MIB
    summary.add(f"peak RSS, {format_size(size)} get", f"{max(rs, rl):.0f} MiB", f"<= {RSS_MIB:.0f} MiB", ok)
    fleet.stop(leecher)
    fleet.stop(seeder)


def report_rss(fleet: Fleet, summary: Summary) -> None:
    """Peak RSS of every daemon, by group."""
    print(f"\npeak RSS (VmHWM) of every daemon started (target <= {RSS_MIB:.0f} MiB each):")
    for group, peaks in fleet.rss.items():
        print(
            f"  {group} ({len(peaks)}): max {max(peaks):.0f} MiB   "
            + " ".join(f"{p:.0f}" for p in peaks)
            + f"   {verdict(max(peaks) <= RSS_MIB)}"
        )
    worst = max(max(p) for p in fleet.rss.values())
    summary.add("peak RSS, every daemon", f"{worst:.0f} MiB", f"<= {RSS_MIB:.0f} MiB", worst <= RSS_MIB)


def main() -> None:
    """Parse the options, run every part, print the summary; stop everything started, whatever happens."""
    if len(sys.argv) == 5 and sys.argv[1] == "--lt-worker":
        lt_worker(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="object size (default 1GiB)")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds per figure, after one untimed (default 5)")
    ap.add_argument("--leechers", type=int, default=4, help="fetchers at once in part 2; 0 skips it (default 4)")
    ap.add_argument("--dir", default=None, help="where to work (default: the system's temp folder)")
    ap.add_argument("--big", default=None, help="also one 1:1 get of this size, for peak RSS (e.g. 4GiB)")
    ap.add_argument("--no-cloud", action="store_true", help="skip part 3 (the cloud's holders)")
    args = ap.parse_args()
    try:
        import libtorrent as lt
    except ImportError:
        raise SystemExit("libtorrent is missing: .venv/bin/pip install -e '.[bench]'") from None
    size = parse_size(args.size)
    runs = max(1, args.runs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops every daemon started
    work = Path(tempfile.mkdtemp(prefix="peercloud-transfer-", dir=args.dir))
    fleet = Fleet(work)
    summary = Summary()
    print(
        f"transfer bench: {format_size(size)}, {runs} timed rounds after one untimed, {args.leechers} fetchers, "
        f"libtorrent {lt.__version__}, {os.cpu_count()} CPUs, in {work}",
        flush=True,
    )
    try:
        with lt_procs() as procs:
            warm = max(2 * 2**30, (args.leechers + 2) * size)
            avail = next(
                int(x.split()[1]) * 1024 for x in Path("/proc/meminfo").read_text().splitlines() if "MemAvailable" in x
            )
            warm = min(warm, avail // 2)
            print(f"warm-up: wrote and deleted {format_size(warm)} in {warm_up_memory(work, warm):.1f} s", flush=True)
            src = work / "object.bin"
            digest = make_source(src, size)
            torrent = work / "object.torrent"
            make_torrent(src, torrent)
            procs.append(LtProc("seed", torrent, work))
            lt_seeder = procs[0]
            seeder = fleet.start("seeder", "seeder")
            cap = json.loads(cli(seeder.home, "add", str(src), "--class", "replica-1", "--json"))["read_cap"]
            print(f"\n1. one peer -> one peer, {format_size(size)}", flush=True)
            one = one_to_one(fleet, seeder, cap, src, digest, torrent, lt_seeder, runs, work)
            report_one_to_one(one, size, runs, summary)
            if args.leechers:
                print(f"\n2. one seeder -> {args.leechers} fetchers at once, {format_size(size)}", flush=True)
                rounds = swarm(fleet, seeder, cap, digest, torrent, lt_seeder, size, runs, args.leechers, work)
                report_swarm(rounds, size, args.leechers, summary)
            fleet.stop(seeder)
        if not args.no_cloud:
            from_holders(fleet, src, digest, size, runs, summary, median(one.get))
        src.unlink()
        if args.big:
            big_get(fleet, work, parse_size(args.big), summary)
        report_rss(fleet, summary)
        summary.print(f"summary: {format_size(size)}, medians of {runs}, loopback, same run")
    finally:
        fleet.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
