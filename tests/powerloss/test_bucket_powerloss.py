"""Power cuts on the bucket path: a writer's puts and removal, and a reader's catch-up.

A cloud of two members: the one on crashfs and an admin on the real disk, each restored from
the same pristine copy for every cut. The cut points fall after a lead-in (both daemons up and
linked), in the bucket work on the cut disk:

- writer: a put adds the file as a cloud object and names it (a pending `bucket_keys` row) in
  one transaction; a moment later the node adds the pending entries as the next batch object of
  its log (from a file in HOME/scratch), signs a head and keeps it with its log position in one
  synced transaction (`BucketTables.log_names`), then sends it to the members;
- reader: `bucket import` keeps the cap, fetches the writer's batch objects from their holder
  and merges them (`merge_names`), then notes how far it read (`note_read`).

After the cut the disk must hold a listing made of what was put (every key names an object that
is whole and reads back identical), with every put and removal that reported success in effect,
and at least what the other member already read from it; fsck is clean. Then the member restarts
beside the other and the bucket converges: the reader of the writer's bucket lists exactly what
the cut member lists (the entries the cut left pending are published), the cut reader lists
exactly the writer's keys; a put (once converged, so that it does not publish what the cut left
pending in `resume`'s place) and a second import work after the restart.
"""

import re
from pathlib import Path

import pytest

from peercloud.content.caps import ReadCap
from peercloud.identity import PeerId
from peercloud.node.home import NodeHome
from peercloud.node.local import LocalNode

from ..conftest import random_bytes, run_cli_async
from ..daemons import Daemon
from ..test_cloud import all_online
from .checks import durable_blocks, init_home, restart_checks
from .harness import Outcome, power_cuts, power_out
from .test_cloud_powerloss import CUTS, Member, free_port, invite, manifest_of, peer_of, restored, until
from .test_delete_powerloss import linked, rows

CLI_TIMEOUT = 150.0  # seconds a bucket command may take (an import waits up to 120 s to catch up)
CATCH_UP = 45.0  # seconds a restarted reader may take to read the writer's log again
TIMEOUT = 240 + 60 * CUTS  # a cut run takes 15-20 s here, a failing one up to two minutes

Listing = dict[str, str]  # key -> object ID (hex), as `ls BUCKET --recursive` shows it


def listing(d: Daemon, bucket: str) -> Listing:
    """Every live key of a bucket, as a running node lists it."""
    return {k["key"]: k["object_id"] for k in d.json("ls", bucket, "--recursive")["keys"]}


def key_rows(home: Path, bucket: bytes) -> dict[str, tuple[int, bool, bytes, bytes]]:
    """key -> (hlc, removed, object ID, object key) of every entry a node keeps for a bucket,
    tombstones included, read from its index."""
    sql = "SELECT key, hlc, removed, object_id, object_key FROM bucket_keys WHERE bucket_id = ?"
    return {str(k): (int(h), bool(r), bytes(o), bytes(ok)) for k, h, r, o, ok in rows(home, sql, bucket)}


def on_disk(home: Path, bucket: bytes) -> Listing:
    """The live keys of a bucket kept in a (stopped) node's index."""
    return {k: oid.hex() for k, (_, removed, oid, _) in key_rows(home, bucket).items() if not removed}


def pending(home: Path, bucket: bytes) -> int:
    """This node's entries of a bucket not yet in a batch of its log."""
    return int(rows(home, "SELECT COUNT(*) FROM bucket_keys WHERE bucket_id = ? AND pending = 1", bucket)[0][0])


def log_read(home: Path, bucket: bytes, writer: bytes) -> int:
    """How far a node has read (or, for its own, written) a writer's log of a bucket."""
    found = rows(home, "SELECT seq FROM bucket_logs WHERE bucket_id = ? AND writer = ?", bucket, writer)
    return int(found[0][0]) if found else 0


def head_held(home: Path, bucket: bytes, writer: bytes) -> int:
    """The sequence number of the newest head of a writer's log a node keeps (0: none)."""
    found = rows(home, "SELECT seq FROM bucket_heads WHERE bucket_id = ? AND writer = ?", bucket, writer)
    return int(found[0][0]) if found else 0


def knows_bucket(home: Path, bucket: bytes) -> bool:
    return bool(rows(home, "SELECT 1 FROM buckets WHERE bucket_id = ?", bucket))


def orphan_batches(home: Path, name: str) -> set[str]:
    """Index batches of our own log (objects named NAME.index.EPOCH.SEQ) no log position names:
    added, then cut short of `log_names`."""
    pattern = re.compile(rf"{re.escape(name)}\.index\.\d+\.\d+")
    added = {bytes(oid) for oid, n in rows(home, "SELECT id, name FROM objects") if pattern.fullmatch(str(n))}
    noted = {bytes(r[0]) for r in rows(home, "SELECT object_id FROM bucket_batches")}
    return {oid.hex()[:12] for oid in added - noted}


def run_until(d: Daemon, args: tuple[str, ...], mnt: Path | None, timeout: float = CLI_TIMEOUT) -> bool:
    """The CLI through the daemon `d`; True when it succeeded. With the power gone (the member on
    `mnt` is killed then), it is not waited on any longer."""
    proc = run_cli_async(d.home, *args)
    try:
        until(lambda: proc.poll() is not None, mnt, timeout)
        if proc.poll() is None and mnt is not None and power_out(mnt):
            return False
        proc.wait(timeout=timeout)
        return proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def read_back(d: Daemon, target: str, scratch: Path) -> bytes:
    """`get BUCKET/KEY -o OUT` through a running node: the bytes it wrote."""
    out = scratch / "got.bin"
    out.unlink(missing_ok=True)
    d.cli("get", target, "-o", str(out))
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def whole_and_same(
    home: Path, keys: dict[str, tuple[int, bool, bytes, bytes]], sources: dict[str, bytes], scratch: Path
) -> None:
    """Every live key of a stopped node names an object whose blocks are on its disk, whole, and
    that decrypts to what was put under that key."""
    have = durable_blocks(home)
    out = scratch / "key-back.bin"
    out.unlink(missing_ok=True)
    with LocalNode(NodeHome(home)) as node:
        for key, (_, removed, oid, okey) in keys.items():
            if removed:
                continue
            assert oid in have, f"{key} is listed, but its object's manifest is not whole on the disk"
            missing = {bid for _, _, bid in manifest_of(home, oid.hex()).blocks()} - have
            assert not missing, f"{key} is listed, but {len(missing)} block(s) of its object are not whole"
            node.get(str(ReadCap(oid, okey)), out)
            try:
                assert out.read_bytes() == sources[key], f"{key} reads back different after the cut"
            finally:
                out.unlink()


def placed(d: Daemon, copies: int) -> bool:
    """Every object of the cloud is healthy with `copies` complete copies."""
    objects = d.json("status")["objects"]
    return bool(objects) and all(r["health"] == "healthy" and r["complete_copies"] >= copies for r in objects)


def scenario_writer(tmp_path: Path, cuts: int) -> None:
    """The member on the cut disk puts a file and a folder into its bucket and removes a key; the
    other member reads the bucket (a read cap)."""
    pristine, run = tmp_path / "pristine", tmp_path / "run"
    ports = {"admin": free_port()}
    member = Member(tmp_path, free_port())
    init_home(pristine)
    me = PeerId.parse(peer_of(pristine / "home")).public_key
    files = tmp_path / "files"
    tree = files / "tree"
    (tree / "sub").mkdir(parents=True)
    made = {
        "keep.txt": (files / "keep.txt", 20_000, 31),
        "old.txt": (files / "old.txt", 30_000, 32),
        "file.bin": (files / "file.bin", 3 * 1024 * 1024 // 2 + 3, 33),
        "dir/a.txt": (tree / "a.txt", 4_000, 34),
        "dir/b.txt": (tree / "b.txt", 5_000, 35),
        "dir/sub/c.txt": (tree / "sub" / "c.txt", 6_000, 36),
        "after.txt": (files / "after.txt", 7_000, 37),
    }
    sources: dict[str, bytes] = {}
    for key, (path, size, seed) in made.items():
        path.write_bytes(random_bytes(size, seed=seed))
        sources[key] = path.read_bytes()
    by_name = {made[k][0].name: v for k, v in sources.items() if k != "after.txt"}  # restart_checks reads by name
    folder = ("dir/a.txt", "dir/b.txt", "dir/sub/c.txt")
    with restored(tmp_path, pristine, ports) as started:
        admin = started["admin"]
        admin.cli("cloud", "create", "lab", "--offer", "10GiB")
        with member.running(pristine / "home") as d:
            assert d is not None
            d.cli("cloud", "join", invite(admin), "--offer", "10GiB")
            assert until(lambda: all_online(d, 2), None), "the members did not link"
            bucket = bytes.fromhex(d.json("bucket", "create", "photos", "--class", "replica-2")["bucket_id"])
            for key in ("keep.txt", "old.txt"):
                d.json("put", str(made[key][0]), f"photos/{key}")
            admin.json("bucket", "import", d.json("bucket", "share", "photos")["cap"], "--as", "theirs")
            assert until(lambda: listing(admin, "theirs") == listing(d, "photos") != {}, None), "no import"
            assert until(lambda: placed(admin, 2), None), "replica-2 did not settle"
    steps = {
        "put file": ("put", str(made["file.bin"][0]), "photos/file.bin", "--json"),
        "put folder": ("put", str(tree), "photos/dir/", "--json"),
        "rm": ("rm", "photos/old.txt", "--json"),
    }
    said: dict[str, bool] = {}  # whether each command of the run reported success

    def workload(mnt: Path) -> bool:
        said.clear()
        with restored(pristine, run, ports) as others, member.running(mnt / "home") as d:
            if d is None or not until(lambda: all_online(d, 2), mnt):
                return False
            try:
                for step, args in steps.items():
                    said[step] = run_until(d, args, mnt)
                    if not said[step]:
                        return False
                return until(lambda: listing(others["admin"], "theirs") == listing(d, "photos"), mnt)
            finally:
                d.kill()  # the power goes right after: a clean stop would only add a checkpoint

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        kept = key_rows(home, bucket)
        live = on_disk(home, bucket)
        cut_short = orphan_batches(home, "photos")  # added, but the cut came before `log_names`
        print(
            f"  on the disk: {sorted(live)}, {pending(home, bucket)} pending, log at batch "
            f"{log_read(home, bucket, me)}, unnoted batch objects {cut_short or '-'}; said {said}"
        )
        assert set(live) <= set(sources), f"keys nobody put: {set(live) - set(sources)}"
        assert "keep.txt" in live, "a key put before the run is gone"
        if said.get("put file"):
            assert "file.bin" in live, "a put that reported success is gone after the cut"
        if said.get("put folder"):
            assert set(folder) <= set(live), "a folder put that reported success is not all there"
        if said.get("rm"):
            assert "old.txt" not in live, "an rm that reported success is undone after the cut"
        # What the other member read of the log (a head, the entries) is on the disk.
        assert head_held(run / "admin", bucket, me) <= log_read(home, bucket, me), (
            "the other member holds a head of this log the disk does not have"
        )
        for key, (hlc, *_) in key_rows(run / "admin", bucket).items():
            assert key in kept and kept[key][0] >= hlc, f"the other member read {key!r} the disk no longer has"
        whole_and_same(home, kept, sources, tmp_path)
        restart_checks(home, by_name, set(), tmp_path)
        with restored(run, run / "again", ports) as others, member.running(home) as d:
            assert d is not None
            reader = others["admin"]
            assert until(lambda: all_online(d, 2), None), "the members did not link again after the cut"
            assert listing(d, "photos") == live, "the restarted member lists other keys than its disk kept"
            assert until(lambda: listing(reader, "theirs") == live, None), (
                f"the reader did not converge to the member's listing after the cut: {len(live)} key(s) on "
                f"the member, {len(listing(reader, 'theirs'))} on the reader, {pending(home, bucket)} pending"
            )
            assert pending(home, bucket) == 0, "entries are still pending once the reader converged"
            assert run_until(d, ("put", str(made["after.txt"][0]), "photos/after.txt"), None), "no put after it"
            now = listing(d, "photos")
            assert set(now) == set(live) | {"after.txt"}
            assert until(lambda: listing(reader, "theirs") == now, None), "the reader missed the put after the cut"
            for key in now:
                assert read_back(d, f"photos/{key}", tmp_path) == sources[key], f"{key} reads back different"
            assert read_back(reader, "theirs/after.txt", tmp_path) == sources["after.txt"]
            orphans = orphan_batches(home, "photos")
            assert not orphans, (
                f"batch objects of the log that no log position names are left in the cloud: {orphans} "
                f"({len(orphans & cut_short)} of them added before the cut, their head never kept)"
            )

    try:
        power_cuts(
            pristine,
            run,
            workload,
            check,
            cuts,
            seed=19,
            torn=0.5,
            lead_in=lambda mnt: linked(member, (pristine, run, ports), mnt),
        )
    finally:
        member.log.close()


def scenario_reader(tmp_path: Path, cuts: int) -> None:
    """The member on the cut disk imports a bucket the other member wrote, and catches up."""
    pristine, run = tmp_path / "pristine", tmp_path / "run"
    ports = {"admin": free_port()}
    member = Member(tmp_path, free_port())
    init_home(pristine)
    files = tmp_path / "files"
    tree = files / "tree"
    (tree / "d1").mkdir(parents=True)
    with restored(tmp_path, pristine, ports) as started:
        admin = started["admin"]
        admin.cli("cloud", "create", "lab", "--offer", "10GiB")
        with member.running(pristine / "home") as d:
            assert d is not None
            d.cli("cloud", "join", invite(admin), "--offer", "10GiB")
            assert until(lambda: all_online(d, 2), None), "the members did not link"
            bucket = bytes.fromhex(admin.json("bucket", "create", "photos", "--class", "replica-1")["bucket_id"])
            for i in range(4):  # a log of several batches, one per put
                day = files / f"day{i}.bin"
                day.write_bytes(random_bytes(50_000 + i, seed=40 + i))
                admin.json("put", str(day), f"photos/days/day{i}.bin")
            for i in range(3):
                (tree / f"d{i % 2}").mkdir(exist_ok=True)
                (tree / f"d{i % 2}" / f"f{i}.txt").write_bytes(random_bytes(3_000 + i, seed=50 + i))
            admin.json("put", str(tree), "photos/tree/")
            admin.json("rm", "photos/days/day0.bin")  # a removal to merge too
            cap = admin.json("bucket", "share", "photos")["cap"]
            expected = listing(admin, "photos")
            writer = PeerId.parse(admin.peer_id).public_key
            seq = head_held(admin.home, bucket, writer)
            assert seq >= 4, f"the writer's log has {seq} batch(es)"
            assert until(lambda: head_held(pristine / "home", bucket, writer) == seq, None), "no head reached it"
    one = "tree/d1/f1.txt"
    assert one in expected

    said: dict[str, bool] = {}

    def workload(mnt: Path) -> bool:
        said.clear()
        with restored(pristine, run, ports), member.running(mnt / "home") as d:
            if d is None or not until(lambda: all_online(d, 2), mnt):
                return False
            try:
                said["import"] = run_until(d, ("bucket", "import", cap, "--as", "theirs", "--json"), mnt)
                return said["import"] and until(lambda: listing(d, "theirs") == expected, mnt)
            finally:
                d.kill()  # the power goes right after: a clean stop would only add a checkpoint

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        known = knows_bucket(home, bucket)
        live = on_disk(home, bucket)
        read = log_read(home, bucket, writer)
        print(f"  on the disk: bucket {'kept' if known else 'unknown'}, {len(live)} key(s), log read to {read}")
        wrong = {k for k, oid in live.items() if expected.get(k) != oid}
        assert not wrong, f"keys the writer does not list (or with another object): {wrong}"
        assert read <= seq, "the disk notes more of the log read than the writer wrote"
        if read == seq:
            assert live == expected, "the log is noted read to its head, but keys of it are missing"
        if said.get("import"):
            assert known and live == expected, "an import that reported success is not all on the disk"
        restart_checks(home, {}, set(), tmp_path)
        with restored(run, run / "again", ports), member.running(home) as d:
            assert d is not None
            assert until(lambda: all_online(d, 2), None), "the members did not link again after the cut"
            resumed = known and until(lambda: listing(d, "theirs") == expected, None, CATCH_UP)
            again = d.cli("bucket", "import", cap, "--as", "theirs", "--json", check=False)
            assert again.returncode == 0, f"a second import after the cut failed: {again.stderr}"
            caught = until(lambda: listing(d, "theirs") == expected, None, CATCH_UP)
            assert not known or resumed, (
                f"the bucket was kept but its catch-up did not resume after the cut: {len(live)} of "
                f"{len(expected)} key(s) on the disk, the log read to batch {read} of {seq}; a second "
                f"import {'caught it up' if caught else 'did not help either'}"
            )
            assert caught, "the reader does not list the writer's keys after the cut and a second import"
            assert read_back(d, f"theirs/{one}", tmp_path) == (tree / "d1" / "f1.txt").read_bytes()

    try:
        power_cuts(
            pristine,
            run,
            workload,
            check,
            cuts,
            seed=20,
            torn=0.5,
            lead_in=lambda mnt: linked(member, (pristine, run, ports), mnt),
        )
    finally:
        member.log.close()


@pytest.mark.timeout(TIMEOUT)
def test_power_cut_while_writing_a_bucket(tmp_path: Path) -> None:
    scenario_writer(tmp_path, CUTS)


@pytest.mark.timeout(TIMEOUT)
def test_power_cut_while_reading_a_bucket(tmp_path: Path) -> None:
    scenario_reader(tmp_path, CUTS)
