"""A new member catching up with a cloud of 100,000 objects: real daemons on loopback.

0. Warm-up, untimed: a file larger than the indexes is written, fsynced and deleted.
1. Four daemons form a cloud with the CLI (`cloud create`, `cloud invite`, `cloud join`), then
   stop. Each member's index is filled through `peercloud.store.index.Index` in big
   transactions: 100,000 catalog entries (replica-3, one 4 KiB block each) on every member, as
   the first member's signed log (250 batches of MAX_OPS entries, signed with its node key and
   kept with `append_batch`, as a member that pulled them keeps them); on
   the three members that hold an object, its objects / object_blocks / blocks / holds rows
   (what `add_object(..., catalog=...)` writes, so `local_inventory` announces it); and on every
   member the other holders' claims, as proved by an audit (a settled cloud: no audit due for an
   hour). The block files are NOT written: catalog sync and HAVEs never read them, but audits
   and placements of these objects fail (the output counts the placement pulls that failed).
2. The members restart and settle: every claim re-announced since the restart, CPU quiet.
3. A new member joins by invite (fresh home, `cloud join TOKEN` with the CLI), timed from the
   command's start until its index (polled read-only) has every catalog entry and every
   member's claims; bytes it received from members (bytes_in of its links, `GET /v1/peers`).
   Throughout, an in-process peer (`net.link.dial`) pings it and one old member every 50 ms.
4. Peak RSS (VmHWM) of every daemon; the daemons stop; `Reconciler.round()` is timed in-process
   over a copy of an old member's home (a `NodeService` without its listener), full sweeps, one
   warm-up then the median, cold (a fresh service: nothing known settled, as after a start or a
   change of who is online) and settled (the sweeps after it): alone online (it coordinates
   every object), and with the other members counted online (stand-in links, no calls made).

Prints each figure next to its target with PASS or MISS. About 4 minutes at 100,000 objects.

    .venv/bin/python bench/scale.py [--objects 100000] [--members 4] [--runs 3] [--dir DIR] [--keep] [--verbose]
"""

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from peercloud.cli.client import DaemonClient
from peercloud.cloud import catalog
from peercloud.cloud.classes import DEFAULT_CLASSES
from peercloud.cloud.document import CloudDoc, SignedDoc
from peercloud.content import cipher
from peercloud.content.manifest import Manifest
from peercloud.identity import Identity, PeerId
from peercloud.net.link import Address, PeerLink, dial
from peercloud.node import reconciler as reconciler_mod
from peercloud.node.home import NodeHome
from peercloud.node.ingest import MANIFEST_SEGMENT
from peercloud.node.local import LocalNode
from peercloud.node.process import DaemonProcess, start_daemon
from peercloud.node.service import NodeService
from peercloud.store.index import Index
from peercloud.wire import messages as m

CLI = [sys.executable, "-m", "peercloud"]
CLASS = "replica-3"
COPIES = 3
OBJECT_SIZE = 4096
OFFER = "100GiB"
PING_EVERY = 0.05
CACHE_KIB = 256 * 1024  # SQLite page cache while filling an index
TICKS = os.sysconf("SC_CLK_TCK")
MB = 1e6
# targets
CATCHUP_SECONDS = 10.0
CATCHUP_BYTES = 20 * MB
PING_MAX = 0.100
ROUND_SECONDS = 2.0
RSS_MIB = 300.0


def cli(home: Path, *args: str) -> str:
    return subprocess.run([*CLI, "--home", str(home), *args], check=True, capture_output=True, text=True).stdout


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


def wait(what: str, check: Callable[[], bool], timeout: float, every: float = 0.1) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
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
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)


# -- 1. and 2. the cloud, its synthetic objects, the restart


def start_all(homes: list[Path], ports: list[int] | None = None, verbose: bool = False) -> list[DaemonProcess]:
    """Start daemons side by side (each takes a couple of seconds to import and open its index)."""
    with ThreadPoolExecutor(len(homes)) as pool:
        futures = [
            pool.submit(start_daemon, h, port=p, verbose=verbose)
            for h, p in zip(homes, ports or [0] * len(homes), strict=True)
        ]
    started = [f.result() for f in futures if f.exception() is None]
    if len(started) < len(homes):
        for d in started:
            d.stop()
        raise SystemExit(f"a daemon did not start: {next(f.exception() for f in futures if f.exception())}")
    return started


def form_cloud(work: Path, members: int, verbose: bool) -> list[DaemonProcess]:
    nodes = start_all([work / f"p{i}" for i in range(members)], verbose=verbose)
    admin = nodes[0]
    cli(admin.home, "cloud", "create", "scale", "--offer", OFFER, "--tag", "site=s0")
    for i, d in enumerate(nodes[1:], start=1):
        token = cli(admin.home, "cloud", "invite").strip().splitlines()[-1]
        cli(d.home, "cloud", "join", token, "--offer", OFFER, "--tag", f"site=s{i}")

    def all_online(d: DaemonProcess) -> bool:
        cloud = api(d).call("GET", "/v1/cloud")
        return len(cloud["members"]) == members and all(x["online"] for x in cloud["members"])

    for d in nodes:
        wait(f"{d.home.name} to see every member online", lambda d=d: all_online(d), 60)
    return nodes


@dataclass
class World:
    """The synthetic objects: IDs, data block IDs, and which members hold each."""

    ids: list[bytes]
    blocks: list[bytes]
    holders: list[tuple[int, ...]]
    held: list[int] = field(default_factory=list)  # objects held per member


def make_world(objects: int, members: int, seed: int = 7) -> World:
    rng = random.Random(seed)
    ids = sorted(rng.randbytes(32) for _ in range(objects))  # in key order: the inserts append to the B-trees
    blocks = [rng.randbytes(32) for _ in range(objects)]
    holders = [tuple(sorted(rng.sample(range(members), COPIES))) for _ in range(objects)]
    held = [sum(1 for h in holders if i in h) for i in range(members)]
    return World(ids, blocks, holders, held)


def shapes() -> tuple[int, int]:
    """Bytes of a 4 KiB replica object's data block and of its manifest, from a real manifest."""
    coding = DEFAULT_CLASSES[CLASS].coding
    manifest = Manifest(OBJECT_SIZE, 2**20, coding, cipher.key_check(cipher.random_key()), os.urandom(32))
    return manifest.share_size(0), len(manifest.encode())


def cloud_doc(index: Index) -> CloudDoc:
    raw = index.cloud_doc()
    if raw is None:
        raise SystemExit("a member's index holds no cloud document")
    return SignedDoc.decode(raw).doc


CatalogLog = list[tuple[int, bytes, tuple[catalog.Op, ...]]]  # (seq, signed batch, its entries)


def sign_catalog(home: Path, world: World) -> tuple[bytes, CatalogLog]:
    """The catalog as one stopped member's log: batches of MAX_OPS entries signed with its node key.

    Returns the author (its public key) and the batches in order.
    """
    identity = Identity.load(home / "node.key")
    index = Index(home / "index.sqlite")
    try:
        cloud_id = cloud_doc(index).cloud_id
    finally:
        index.close()
    now = time.time()
    ops = [catalog.Op(catalog.PUT, oid, now, CLASS, 1, 1, 1, OBJECT_SIZE) for oid in world.ids]
    log: CatalogLog = []
    prev = catalog.NO_PREV
    for seq, start in enumerate(range(0, len(ops), catalog.MAX_OPS), start=1):
        batch = catalog.Batch.sign(identity, cloud_id, seq, prev, now, ops[start : start + catalog.MAX_OPS])
        log.append((seq, batch.encode(), batch.ops))
        prev = catalog.digest(log[-1][1])
    return identity.peer_id.public_key, log


def populate(home: Path, me: int, keys: list[bytes], world: World, author: bytes, log: CatalogLog) -> int:
    """Fill one stopped member's index; returns how many objects its `local_inventory` announces."""
    block_size, manifest_size = shapes()
    now = time.time()
    mine = [i for i, h in enumerate(world.holders) if me in h]
    index = Index(home / "index.sqlite")
    try:
        with index.transaction() as db:
            db.execute(f"PRAGMA cache_size={-CACHE_KIB}")  # this connection only: the daemon keeps its own
        classes = cloud_doc(index).class_map
        for seq, data, ops in log:  # the author's log, kept as a member that pulled it keeps it
            index.append_batch(author, seq, data, [catalog.owned(op, author, classes) for op in ops])
        index.add_blocks(
            sorted(pair for i in mine for pair in ((world.blocks[i], block_size), (world.ids[i], manifest_size)))
        )
        with index.transaction() as db:  # what `add_object(..., catalog=...)` and `hold` write, all at once
            db.executemany(
                "INSERT INTO objects (id, name, size, class, added_at, read_key) VALUES (?, '', ?, ?, ?, NULL)",
                [(world.ids[i], OBJECT_SIZE, CLASS, now) for i in mine],
            )
            db.executemany(
                "INSERT INTO object_blocks (object_id, segment, share, block_id) VALUES (?, ?, 0, ?)",
                [
                    (world.ids[i], seg, bid)
                    for i in mine
                    for seg, bid in ((0, world.blocks[i]), (MANIFEST_SEGMENT, world.ids[i]))
                ],
            )
            db.executemany(
                "INSERT INTO holds (object_id, block_id, provisional) VALUES (?, ?, 0)",
                [(world.ids[i], bid) for i in mine for bid in (world.blocks[i], world.ids[i])],
            )
            # The other holders' claims, proved by an audit a while ago: nothing due for an hour.
            db.executemany(
                "INSERT INTO holdings (peer_id, object_id, bitmap, updated_at, confirmed, checked_at, failed_at,"
                " pinned, provisional, due_at) VALUES (?, ?, x'80', ?, x'80', ?, NULL, 0, 0, ?)",
                sorted(
                    (keys[h], oid, now, now, now + 3600 * (0.9 + 0.2 * (i % 101) / 100))
                    for i, (oid, hs) in enumerate(zip(world.ids, world.holders, strict=True))
                    for h in hs
                    if h != me
                ),
            )
        announced, after = 0, b""
        while after is not None:
            items, after = index.local_inventory(after, 500)
            announced += sum(1 for it in items if it.bitmap == b"\x80")
        return announced
    finally:
        index.close()


def claims_since(home: Path, since: float) -> int:
    db = read_only(home / "index.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM holdings WHERE updated_at >= ?", (since,)).fetchone()[0])
    finally:
        db.close()


def claims_between(home: Path, peers: list[bytes], start: float, end: float) -> int:
    db = read_only(home / "index.sqlite")
    try:
        marks = ", ".join("?" * len(peers))
        sql = f"SELECT COUNT(*) FROM holdings WHERE peer_id IN ({marks}) AND updated_at BETWEEN ? AND ?"
        return int(db.execute(sql, (*peers, start, end)).fetchone()[0])
    finally:
        db.close()


def settle(nodes: list[DaemonProcess], world: World, since: float, timeout: float) -> tuple[float, str]:
    """Wait until every member re-recorded every claim since `since` and the daemons' CPU is quiet.

    Returns the seconds it took and what was still missing at the timeout ("" when settled).
    """
    start = time.monotonic()
    expected = [COPIES * len(world.ids) - world.held[i] for i in range(len(nodes))]
    heard = [0] * len(nodes)
    while time.monotonic() - start < timeout:
        heard = [claims_since(d.home, since) for d in nodes]
        if all(h >= e for h, e in zip(heard, expected, strict=True)):
            break
        time.sleep(0.5)
    else:
        left = sum(e - h for h, e in zip(heard, expected, strict=True) if e > h)
        return time.monotonic() - start, f"{left:,} claims not re-announced yet"
    quiet = 0
    while time.monotonic() - start < timeout and quiet < 2:
        before = [cpu_seconds(d.proc.pid) for d in nodes]
        time.sleep(1.0)
        busy = max(cpu_seconds(d.proc.pid) - b for d, b in zip(nodes, before, strict=True))
        quiet = quiet + 1 if busy < 0.25 else 0
    return time.monotonic() - start, "" if quiet >= 2 else "CPU still busy"


# -- 3. the pinging peer and the catch-up


class Pinger:
    """An in-process peer on its own loop thread that pings links every PING_EVERY seconds."""

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.samples: dict[str, list[tuple[float, float | None]]] = {}  # name → (when, rtt or None)
        self._tasks: list[asyncio.Task[None]] = []
        self.links: list[PeerLink] = []

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def connect(self, address: str) -> PeerLink:
        async def go() -> PeerLink:
            async def on_request(lk: PeerLink, msg: m.Message) -> None:
                return None

            hello = m.Hello(m.PROTOCOL_VERSION, ("blocks",), "bench-pinger")
            return await dial(Address.parse(address), self.identity, hello, on_request)

        link: PeerLink = self.run(go())
        self.links.append(link)
        return link

    def start(self, name: str, link: PeerLink) -> None:
        samples = self.samples.setdefault(name, [])

        async def loop() -> None:
            while True:
                started = time.monotonic()
                try:
                    samples.append((started, await link.ping(timeout=5.0)))
                except Exception:
                    samples.append((started, None))
                await asyncio.sleep(max(0.0, PING_EVERY - (time.monotonic() - started)))

        async def go() -> None:
            self._tasks.append(asyncio.get_running_loop().create_task(loop()))

        self.run(go())

    def close(self) -> None:
        async def go() -> None:
            for task in self._tasks:
                task.cancel()
            for link in self.links:
                link.close("bench done")
            await asyncio.sleep(0.05)

        with contextlib.suppress(Exception):
            self.run(go())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class CatchUp:
    seconds: float
    joined_at: float
    catalog_at: float
    bytes_from_members: int
    bytes_all: int
    cpu_new: float
    cpu_old: float
    timeline: list[tuple[float, int, int]]  # (seconds since join, catalog entries, claims)
    complete: bool  # False: the timeout came first


def catch_up(
    newcomer: DaemonProcess,
    nodes: list[DaemonProcess],
    token: str,
    expected: dict[bytes, int],
    n: int,
    timeout: float,
) -> tuple[CatchUp, float, float]:
    """Join the newcomer and poll its index until it has the catalog and every member's claims (or the timeout).

    Returns the figures and the monotonic start and end of the catch-up.
    """
    db = read_only(newcomer.home / "index.sqlite")
    cpu0 = cpu_seconds(newcomer.proc.pid), sum(cpu_seconds(d.proc.pid) for d in nodes)
    timeline: list[tuple[float, int, int]] = []
    catalog_at = joined_at = None
    complete = False
    start = time.monotonic()
    join = subprocess.Popen(
        [*CLI, "--home", str(newcomer.home), "cloud", "join", token, "--offer", OFFER, "--tag", "site=new"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:
            now = time.monotonic()
            if joined_at is None and join.poll() is not None:
                if join.returncode:
                    raise SystemExit(f"cloud join failed: {join.stderr.read().decode() if join.stderr else ''}")
                joined_at = now - start
            catalog = int(db.execute("SELECT COUNT(*) FROM catalog").fetchone()[0])
            rows = {bytes(p): int(c) for p, c in db.execute("SELECT peer_id, COUNT(*) FROM holdings GROUP BY peer_id")}
            timeline.append((now - start, catalog, sum(rows.values())))
            if catalog >= n and catalog_at is None:
                catalog_at = now - start
            if catalog >= n and all(rows.get(k, 0) >= v for k, v in expected.items()):
                complete = True
                break
            if now - start > timeout:
                break
            time.sleep(0.05)
        done = time.monotonic()
        cpu_new = cpu_seconds(newcomer.proc.pid) - cpu0[0]
        cpu_old = sum(cpu_seconds(d.proc.pid) for d in nodes) - cpu0[1]
        peers = api(newcomer).call("GET", "/v1/peers")
        members = {d.peer_id for d in nodes}
        from_members = sum(p["bytes_in"] for p in peers if p["peer_id"] in members)
        bytes_all = api(newcomer).call("GET", "/v1/node")["bytes_in"]
        if joined_at is None:
            join.wait(30)
            joined_at = time.monotonic() - start
    finally:
        db.close()
        if join.poll() is None:
            join.kill()
    figures = CatchUp(
        done - start,
        joined_at,
        catalog_at if catalog_at is not None else float("nan"),
        from_members,
        bytes_all,
        cpu_new,
        cpu_old,
        timeline,
        complete,
    )
    return figures, start, done


def phase(timeline: list[tuple[float, int, int]], at: float, n: int) -> str:
    """What the newcomer's index held at `at` seconds after the join."""
    before = [(c, h) for t, c, h in timeline if t <= at]
    catalog, claims = before[-1] if before else (0, 0)
    return f"catalog {catalog:,}/{n:,}, claims {claims:,}"


def log_sizes(nodes: list[DaemonProcess]) -> dict[Path, int]:
    return {d.home: (d.home / "daemon.log").stat().st_size for d in nodes}


def failed_pulls(since: dict[Path, int]) -> dict[str, int]:
    """'could not pull' warnings each daemon logged after `since` (placements of objects without files)."""
    out = {}
    for home, offset in since.items():
        with open(home / "daemon.log", "rb") as f:
            f.seek(offset)
            out[home.name] = f.read().count(b"could not pull")
    return out


# -- 4. a reconcile round in-process


async def time_rounds(home: Path, runs: int, others_online: bool) -> tuple[list[float], list[float], int]:
    """Full sweeps of `Reconciler.round()` over `home` (no listener): (cold, settled, objects left).

    Cold: the first sweep of a fresh NodeService (nothing known settled: after a start, or after
    who is online changed), one warm-up service first. Settled: the next sweeps of the last one,
    which skip the objects whose plan was empty (what a sweep costs in a quiet cloud).
    """
    reconciler_mod.FULL_SWEEP = 0.0  # every round sweeps the whole catalog (this process only)
    cold: list[float] = []
    settled: list[float] = []
    unfinished = 0
    for attempt in range(runs + 1):
        node = LocalNode(NodeHome(home))
        try:
            service = NodeService(node, Address("127.0.0.1", 0))
            doc = service.membership.require()
            if others_online:
                # Stand-ins for links: the members count as online; a healthy cloud makes no calls.
                me = node.identity.peer_id
                others = [x.peer_id for x in doc.members if x.peer_id != me]
                service.peers.links.update({pid: cast(PeerLink, None) for pid in others})
                service.peers.inventoried.update(others)  # their inventories are in the index already
            start = time.perf_counter()
            await service.reconciler.round()
            if attempt:
                cold.append(time.perf_counter() - start)
            if attempt == runs:
                for _ in range(runs):
                    start = time.perf_counter()
                    await service.reconciler.round()
                    settled.append(time.perf_counter() - start)
                unfinished = len(service.reconciler.unfinished)
        finally:
            node.close()
    return cold, settled, unfinished


def copy_home(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("daemon.json", "daemon.lock", "daemon.log"))
    return dst


# -- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--members", type=int, default=4, help="members before the new one joins (at least 4)")
    ap.add_argument("--runs", type=int, default=3, help="timed reconcile rounds (after one warm-up)")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (homes and logs)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the settling and the catch-up")
    ap.add_argument("--verbose", action="store_true", help="daemons log at INFO (connections, placements)")
    args = ap.parse_args()
    if args.members < 4:
        raise SystemExit("--members must be at least 4")
    n = args.objects
    work = Path(tempfile.mkdtemp(prefix="peercloud-bench-scale-", dir=args.dir))
    nodes: list[DaemonProcess] = []
    newcomer: DaemonProcess | None = None
    pinger: Pinger | None = None
    began = time.monotonic()
    try:
        warm_up(work, max(256, n // 128) * 2**20)
        world = make_world(n, args.members)

        t = time.monotonic()
        nodes = form_cloud(work, args.members, args.verbose)
        keys = [PeerId.parse(d.peer_id).public_key for d in nodes]
        ports = [d.port for d in nodes]
        for d in nodes:
            d.stop()
        print(f"cloud of {args.members} formed with the CLI in {time.monotonic() - t:.1f} s", flush=True)

        t = time.monotonic()
        author, log = sign_catalog(nodes[0].home, world)
        with ProcessPoolExecutor(2) as pool:  # one index per process, two at a time (two cores)
            jobs = [pool.submit(populate, d.home, i, keys, world, author, log) for i, d in enumerate(nodes)]
            for i, (d, job) in enumerate(zip(nodes, jobs, strict=True)):
                if (announced := job.result()) != world.held[i]:
                    raise SystemExit(f"{d.home.name}: local_inventory announces {announced}, not {world.held[i]}")
        sizes = [(d.home / "index.sqlite").stat().st_size / 2**20 for d in nodes]
        print(
            f"{n:,} objects written through Index in {time.monotonic() - t:.1f} s "
            f"(catalog: {len(log)} batches signed by {nodes[0].home.name}) "
            f"({min(world.held):,}-{max(world.held):,} held per member, index {min(sizes):.0f}-{max(sizes):.0f} MiB); "
            "block files NOT written: catalog sync and HAVEs never read them, audits and placements of them fail",
            flush=True,
        )

        t, since = time.monotonic(), time.time()
        nodes = start_all([d.home for d in nodes], ports, args.verbose)
        settled, missing = settle(nodes, world, since, args.timeout)
        print(
            f"members restarted and settled in {time.monotonic() - t:.1f} s "
            f"(every claim re-announced and CPU quiet {settled:.1f} s after they served)"
            if not missing
            else f"members restarted, NOT settled after {settled:.0f} s ({missing}): going on",
            flush=True,
        )

        newcomer = start_daemon(work / "newcomer", verbose=args.verbose)
        pinger = Pinger()
        old = nodes[1]
        names = {"new member": newcomer, f"old member {old.home.name}": old}
        for name, d in names.items():
            pinger.start(name, pinger.connect(d.state["listen"][0]))
        time.sleep(2)  # the old member streams its inventory to every link, the pinger's too: let it pass
        quiet_from = time.monotonic()
        time.sleep(3)  # pings of the settled cloud, for comparison
        token = cli(nodes[0].home, "cloud", "invite").strip().splitlines()[-1]
        expected = {keys[i]: world.held[i] for i in range(len(nodes))}
        logs = log_sizes([*nodes, newcomer])
        wall = time.time()
        result, start, done = catch_up(newcomer, nodes, token, expected, n, args.timeout)
        window = (wall, wall + done - start)
        pings = {name: [(w - start, r) for w, r in pinger.samples[name] if start <= w <= done] for name in names}
        baseline = {name: [r for w, r in pinger.samples[name] if quiet_from <= w < start] for name in names}
        time.sleep(2)  # a moment of what follows the catch-up (audits, sweeps, placements) before peaks are read
        rss = {d.home.name: peak_rss_mib(d.proc.pid) for d in [*nodes, newcomer]}
        audit = read_only(newcomer.home / "index.sqlite")
        failed, proved = audit.execute("SELECT COUNT(failed_at), TOTAL(confirmed = x'80') FROM holdings").fetchone()
        audit.close()
        pinger.close()
        pinger = None
        codes = {d.home.name: d.stop() for d in [*nodes, newcomer]}
        pulls = failed_pulls(logs)
        resent = {
            d.home.name: claims_between(d.home, [k for k in keys if k != keys[i]], *window) for i, d in enumerate(nodes)
        }

        t = time.monotonic()
        home = copy_home(old.home, work / "round-home")
        alone, alone_settled, unfinished_alone = asyncio.run(time_rounds(home, args.runs, others_online=False))
        shutil.rmtree(home)
        home = copy_home(old.home, work / "round-home")
        shared, shared_settled, unfinished_shared = asyncio.run(time_rounds(home, args.runs, others_online=True))
        rounds_took = time.monotonic() - t

        # -- report
        r = result
        print(f"\n{args.members} members + 1 joining, {n:,} objects ({CLASS}, {OBJECT_SIZE} B each), loopback")
        _, catalog_end, claims_end = r.timeline[-1]
        claims = sum(expected.values())
        took = (
            f"{r.seconds:6.2f} s"
            if r.complete
            else f"NOT DONE after {r.seconds:.0f} s (catalog {catalog_end:,}, claims {claims_end:,})"
        )
        print(
            f"catch-up (join command start -> {n:,} catalog entries and {claims:,} claims "
            f"from {len(expected)} members): {took}   target < {CATCHUP_SECONDS:.0f} s   "
            f"{verdict(r.complete and r.seconds < CATCHUP_SECONDS)}"
        )
        catalog_note = f"complete at {r.catalog_at:.2f} s" if r.catalog_at == r.catalog_at else "not complete"  # NaN
        print(
            f"  join command returned at {r.joined_at:.2f} s, catalog {catalog_note}; CPU meanwhile: "
            f"new member {r.cpu_new:.1f} s, old members {r.cpu_old:.1f} s (2 cores)"
        )
        print(
            f"catch-up bytes received from members: {r.bytes_from_members / MB:6.2f} MB "
            f"({r.bytes_from_members / n:.0f} B per object; {r.bytes_all / MB:.2f} MB on all its links)   "
            f"target < {CATCHUP_BYTES / MB:.0f} MB   "
            f"{verdict(r.complete and r.bytes_from_members < CATCHUP_BYTES)}{'' if r.complete else ' (incomplete)'}"
        )
        for name, samples in pings.items():
            ok = [rtt for _, rtt in samples if rtt is not None]
            lost = len(samples) - len(ok)
            worst = max(ok) if ok and not lost else float("inf")
            median = statistics.median(ok) if ok else float("nan")
            print(
                f"ping {name} every {PING_EVERY * 1000:.0f} ms during catch-up: {len(samples)} pings, "
                f"median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms{f', {lost} failed' if lost else ''}   "
                f"target < {PING_MAX * 1000:.0f} ms   {verdict(worst < PING_MAX)}"
            )
            calm = [rtt for rtt in baseline[name] if rtt is not None]
            if calm:
                print(
                    f"    settled cloud, 3 s before the join: median {statistics.median(calm) * 1000:.1f} ms, "
                    f"max {max(calm) * 1000:.1f} ms ({len(calm)} pings)"
                )
            spikes = sorted(((rtt, at) for at, rtt in samples if rtt is not None), reverse=True)[:3]
            for rtt, at in spikes:
                print(f"    {rtt * 1000:7.1f} ms sent at +{at:.2f} s ({phase(r.timeline, at, n)})")
        print(
            f"reconcile round, full sweep in-process over a copy of {old.home.name}'s index, median of {args.runs} "
            f"after a warm-up ({rounds_took:.0f} s for all):"
        )
        for label, times, unfinished in (
            ("cold, alone online (coordinates every object)", alone, unfinished_alone),
            ("settled, alone online", alone_settled, unfinished_alone),
            (f"cold, the other {len(nodes)} members online", shared, unfinished_shared),
            (f"settled, the other {len(nodes)} members online", shared_settled, unfinished_shared),
        ):
            median = statistics.median(times)
            runs = ", ".join(f"{x:.2f}" for x in times)
            print(
                f"  {label:<48} {median:6.2f} s (runs {runs})   target < {ROUND_SECONDS:.0f} s   "
                f"{verdict(median < ROUND_SECONDS)}   objects left with a plan to carry out: {unfinished}"
            )
        for name, peak in rss.items():
            print(f"peak RSS {name:>9}: {peak:6.0f} MiB   target < {RSS_MIB:.0f} MiB   {verdict(peak < RSS_MIB)}")
        print(
            f"new member 2 s after catch-up: {int(proved):,} claims proved, {failed:,} failed audits; "
            f"placement pulls that failed after the join (no block files): "
            + ", ".join(f"{k} {v:,}" for k, v in pulls.items())
        )
        print(
            "claims old members re-recorded from each other during the catch-up (nothing changed between them: "
            "whole inventories re-sent on re-established links): " + ", ".join(f"{k} {v:,}" for k, v in resent.items())
        )
        if any(codes.values()):
            print("exit codes on SIGTERM: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
        print(f"whole benchmark: {time.monotonic() - began:.0f} s")
    finally:
        if pinger is not None:
            pinger.close()
        for d in [*nodes, *([newcomer] if newcomer is not None else [])]:
            with contextlib.suppress(Exception):
                d.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
