"""The store under concurrency: stage, commit, abort, delete and fsck at once, on a real disk and a real daemon."""

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from peercloud.content import merkle
from peercloud.node.fsck import fsck
from peercloud.store.blockstore import BlockStore, Staged
from peercloud.store.index import Index, ObjectRecord

from .conftest import random_bytes, run_cli, run_cli_async
from .daemons import Daemon

RUN_FOR = 4.0  # seconds of hammering


def intact(store: BlockStore, bid: bytes) -> bool:
    """The block's file is there, whole, and hashes to its ID."""
    try:
        return merkle.block_id(store.path(bid).read_bytes()) == bid
    except FileNotFoundError:
        return False


class Hammer:
    """Threads that run a job in a loop until told to stop, collecting whatever goes wrong."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.rounds: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def spawn(self, name: str, job: Callable[[random.Random], None], seed: int) -> None:
        def loop() -> None:
            rng = random.Random(seed)
            while not self.stop.is_set():
                try:
                    job(rng)
                except Exception as e:
                    with self._lock:
                        self.errors.append(f"{name}: {type(e).__name__}: {e}")
                    return
                with self._lock:
                    self.rounds[name] = self.rounds.get(name, 0) + 1

        t = threading.Thread(target=loop, name=name)
        t.start()
        self._threads.append(t)

    def run(self, seconds: float) -> None:
        time.sleep(seconds)
        self.stop.set()
        for t in self._threads:
            t.join(60)


def test_stage_commit_abort_delete_and_fsck_at_once(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    store = BlockStore(tmp_path, index)
    rng = random.Random(7)
    blobs = [random_bytes(rng.randrange(4_000, 90_000), seed=i) for i in range(14)]  # few: they collide often
    ids = [merkle.block_id(b) for b in blobs]
    pinned: dict[bytes, list[bytes]] = {}  # object ID -> its blocks, for objects still pinned
    pins_lock = threading.Lock()
    hammer = Hammer()

    def stage_all(picks: list[int], who: str) -> list[Staged]:
        staged = [store.stage(blobs[i]) for i in picks]
        for s in staged:  # a staged block's file is durable until committed or aborted, whatever else runs
            if not intact(store, s.block_id):
                raise AssertionError(f"{who}: staged block {s.block_id.hex()[:12]} (new={s.new}) has no whole file")
        return staged

    def keeper(r: random.Random) -> None:
        """An add: the object is pinned first (so deletes spare its blocks), then its blocks are stored."""
        picks = r.sample(range(len(blobs)), r.randrange(1, 5))
        oid = merkle.block_id(r.randbytes(32))
        record = ObjectRecord(oid, "f", 1, "replica-1", time.time(), None)
        index.add_object(record, [(n, 0, ids[i]) for n, i in enumerate(picks)], pin=True)
        store.commit(stage_all(picks, "keeper"))
        missing = [ids[i].hex()[:12] for i in picks if not (store.has(ids[i]) and intact(store, ids[i]))]
        assert not missing, f"committed blocks of a pinned object are gone: {missing}"
        with pins_lock:
            pinned[oid] = [ids[i] for i in picks]
            if len(pinned) > 3:  # let older objects go: their blocks become deletable
                old = next(iter(pinned))
                index.unpin(old)
                del pinned[old]

    def cacher(r: random.Random) -> None:
        """A fetch or an add that fails: blocks staged, then committed or aborted, kept by nothing."""
        staged = stage_all(r.sample(range(len(blobs)), r.randrange(1, 4)), "cacher")
        if r.random() < 0.3:
            store.abort(staged)
        else:
            store.commit(staged)  # now deletable at once: nothing keeps these blocks

    def deleter(r: random.Random) -> None:
        """Release and GC: delete what no pin keeps, deciding under the store's lock."""
        store.delete(r.sample(ids, r.randrange(1, 6)), keep=index.kept)
        if r.random() < 0.1:
            store.gc()

    def checker(_: random.Random) -> None:
        """fsck while all that runs: it must find no damage and break no write."""
        report = fsck(store, workers=2)
        assert not report.corrupt and not report.missing, f"fsck saw damage: {report}"

    for n in range(2):
        hammer.spawn(f"keeper{n}", keeper, seed=10 + n)
        hammer.spawn(f"cacher{n}", cacher, seed=20 + n)
    hammer.spawn("deleter", deleter, seed=30)
    hammer.spawn("fsck", checker, seed=40)
    hammer.run(RUN_FOR)

    assert not hammer.errors, hammer.errors
    assert all(hammer.rounds.get(name, 0) >= 5 for name in ("keeper0", "cacher0", "deleter", "fsck")), hammer.rounds
    # The crash-safety invariant held throughout, and nothing leaked.
    for bid, _ in index.block_ids():
        assert intact(store, bid), f"index row without a whole file: {bid.hex()}"
    for oid, blocks in pinned.items():
        assert all(store.has(b) and intact(store, b) for b in blocks), f"pinned object {oid.hex()[:12]} lost a block"
    assert store.used == index.used_bytes()
    final = fsck(store, workers=2)
    assert not final.damaged and not list(store.tmp_dir.iterdir()), final


def test_fsck_spares_a_write_in_flight(tmp_path: Path) -> None:
    """fsck between a block's rename and its commit: the file stays, and the commit names a whole file."""
    index = Index(tmp_path / "index.sqlite")
    store = BlockStore(tmp_path, index)
    data = random_bytes(200_000, seed=5)
    staged = store.stage(data)  # renamed into blocks/, row not committed yet
    (store.tmp_dir / (staged.block_id.hex() + ".1.part")).write_bytes(b"a temp file its writer still uses")
    (store.tmp_dir / "0123.leftover.part").write_bytes(b"from a crash")
    report = fsck(store, workers=2)
    assert report.strays_removed == 1 and not report.damaged
    assert (store.tmp_dir / (staged.block_id.hex() + ".1.part")).exists()
    store.commit([staged])
    assert intact(store, staged.block_id) and store.has(staged.block_id)
    (store.tmp_dir / (staged.block_id.hex() + ".1.part")).unlink()


def test_delete_spares_a_block_staged_meanwhile(tmp_path: Path) -> None:
    """A stage that answered new=False keeps its block until committed: delete skips it, commit finds it."""
    index = Index(tmp_path / "index.sqlite")
    store = BlockStore(tmp_path, index)
    data = random_bytes(50_000, seed=6)
    bid = store.put(data)
    again = store.stage(data)
    assert again.new is False
    assert store.delete([bid]) == []  # claimed by the stage above
    store.commit([again])
    assert intact(store, bid) and store.has(bid)
    assert store.delete([bid], keep=lambda candidates: set(candidates)) == []  # the caller's re-check spares it
    assert store.delete([bid]) == [bid]
    assert not store.has(bid) and not store.path(bid).exists() and store.used == 0


def test_abort_keeps_a_block_another_stage_was_promised(tmp_path: Path) -> None:
    """Two stages of one block, the writer aborts: the other still commits a whole file."""
    index = Index(tmp_path / "index.sqlite")
    store = BlockStore(tmp_path, index)
    data = random_bytes(30_000, seed=8)
    first = store.stage(data)
    second = store.stage(data)
    assert first.new and not second.new
    store.abort([first])
    store.commit([second])
    assert store.has(first.block_id) and intact(store, first.block_id)
    assert store.used == index.used_bytes() == 30_000


def test_daemon_add_while_fsck_runs(daemons: Callable[..., Daemon], tmp_path: Path) -> None:
    """A 40 MB add through the daemon while `peercloud fsck` runs again and again through the same daemon."""
    d = daemons("node")
    for attempt in range(5):
        src = tmp_path / f"file{attempt}.bin"
        src.write_bytes(random_bytes(40_000_000, seed=100 + attempt))
        adding = run_cli_async(d.home, "add", str(src), "--json")
        checks = 0
        while adding.poll() is None or checks < 2:
            check = run_cli(d.home, "fsck", "--json")
            assert check.returncode == 0, check.stdout + check.stderr
            checks += 1
        out, err = adding.communicate()
        assert adding.returncode == 0, f"attempt {attempt}: add failed while fsck ran:\n{out}\n{err}"
        cap = json.loads(out)["read_cap"]
        copy = tmp_path / f"copy{attempt}.bin"
        got = run_cli(d.home, "get", cap, "-o", str(copy))
        assert got.returncode == 0 and copy.read_bytes() == src.read_bytes(), got.stderr
    final = run_cli(d.home, "fsck")
    assert final.returncode == 0, final.stdout + final.stderr
