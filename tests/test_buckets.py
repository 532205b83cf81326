"""Buckets with real daemons: shared to a second device of the owner and read-only to another
member, concurrent writers converge, a member without the cap learns no key name, an unshared
cap sees nothing new, two names of one object, and the owner's node lost entirely."""

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .conftest import run_cli_async
from .daemons import Daemon, wait_for
from .test_cloud import invite, make_cloud

Start = Callable[..., Daemon]
SECRET = "zebra-quartz-name"  # a key name no stored byte of a member without the cap may show


def keys(d: Daemon, target: str = "photos") -> dict[str, str]:
    """key -> object ID, as a node lists them."""
    return {k["key"]: k["object_id"] for k in d.json("ls", target, "--recursive")["keys"]}


def catalog_has(d: Daemon, object_id: str) -> bool:
    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        return (
            db.execute("SELECT 1 FROM catalog WHERE object_id = ?", (bytes.fromhex(object_id),)).fetchone() is not None
        )
    finally:
        db.close()


def home_bytes(d: Daemon) -> bytes:
    """Every byte a node stores: index (with its WAL) and blocks."""
    return b"".join(p.read_bytes() for p in sorted(d.home.rglob("*")) if p.is_file())


def test_shared_bucket_converges_and_hides_names(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    owner, laptop, reader, stranger = make_cloud(daemons, 4)
    owner.cli("class", "add", "all-4", "--replicas", "4")
    made = owner.json("bucket", "create", "photos", "--class", "all-4")
    assert made["access"] == "write" and made["keys"] == 0

    first = make_file(300_000, "first.jpg", seed=1)
    put = owner.json("put", str(first), f"photos/2026/{SECRET}.jpg")
    assert put["bucket"] == "photos" and put["key"] == f"2026/{SECRET}.jpg" and put["size"] == 300_000
    tree = tmp_path / "tree"
    for i in range(5):
        (tree / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 2}" / f"f{i}.txt").write_bytes(bytes([i]) * (1000 + i))
    assert owner.json("put", str(tree), "photos/tree/")["files"] == 5

    # A second device of the owner (write) and another member (read-only).
    laptop.json("bucket", "import", owner.json("bucket", "share", "photos", "--write")["cap"], "--as", "photos")
    read_cap = owner.json("bucket", "share", "photos")["cap"]
    imported = reader.json("bucket", "import", read_cap, "--as", "theirs")
    assert imported["access"] == "read" and imported["keys"] == 6
    wait_for(lambda: keys(laptop) == keys(owner), 30, "the laptop to list what the owner put")
    assert keys(reader, "theirs") == keys(owner)

    level = owner.json("ls", "photos/tree/")
    assert level["prefixes"] == ["tree/d0/", "tree/d1/"] and level["keys"] == []
    assert [k["key"] for k in owner.json("ls", "photos/tree/d1/")["keys"]] == ["tree/d1/f1.txt", "tree/d1/f3.txt"]

    out = tmp_path / "back.jpg"
    reader.cli("get", f"theirs/2026/{SECRET}.jpg", "-o", str(out))
    assert out.read_bytes() == first.read_bytes()
    reader.cli("get", "theirs/tree/", "-o", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "d1" / "f3.txt").read_bytes() == bytes([3]) * 1003

    # A key that is also a folder of other keys: a prefix get refuses before writing anything.
    owner.json("put", str(first), "photos/tree/d0")
    clash = owner.cli("get", "photos/tree/", "-o", str(tmp_path / "clash"), check=False)
    assert clash.returncode == 2 and "both a file and a folder" in clash.stderr and not (tmp_path / "clash").exists()
    assert owner.json("rm", "photos/tree/d0")["removed"] == 1

    refused = reader.cli("put", str(first), "theirs/mine.jpg", check=False)
    assert refused.returncode != 0 and "read-only" in refused.stderr

    # Two writers at once, on the same key and on their own: every node lists the same.
    a, b = make_file(2000, "a.txt", seed=2), make_file(3000, "b.txt", seed=3)
    procs = [
        run_cli_async(owner.home, "put", str(a), "photos/same.txt"),
        run_cli_async(laptop.home, "put", str(b), "photos/same.txt"),
        run_cli_async(owner.home, "put", str(a), "photos/only-owner.txt"),
        run_cli_async(laptop.home, "put", str(b), "photos/only-laptop.txt"),
    ]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read() if p.stderr else ""
    wait_for(
        lambda: keys(owner) == keys(laptop) == keys(reader, "theirs") and len(keys(owner)) == 9,
        30,
        "the three nodes to converge",
    )

    # The member without the cap holds heads (and index batches) but learns no key name.
    assert stranger.cli("ls", "photos", check=False).returncode == 3
    stored = home_bytes(stranger)
    db = sqlite3.connect(stranger.home / "index.sqlite")
    heads = db.execute("SELECT COUNT(*) FROM bucket_heads").fetchone()[0]
    db.close()
    assert heads >= 2 and SECRET.encode() not in stored and b"only-owner" not in stored


def test_two_names_devices_delete_unshare_and_the_owner_lost(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    other, owner, laptop, reader = make_cloud(daemons, 4)
    other.cli("class", "add", "three", "--replicas", "3")
    owner.cli("bucket", "create", "docs", "--class", "three")
    f = make_file(200_000, "report.pdf", seed=4)
    added = owner.json("put", str(f), "docs/report.pdf")
    oid = added["object_id"]
    notes = make_file(5000, "notes.txt", seed=6)
    notes_oid = owner.json("put", str(notes), "docs/notes.txt")["object_id"]
    laptop.json("bucket", "import", owner.json("bucket", "share", "docs", "--write")["cap"], "--as", "docs")
    reader.json("bucket", "import", owner.json("bucket", "share", "docs")["cap"], "--as", "docs")

    # Two names of one object: rm OBJ refused while named; removing one name keeps it.
    owner.json("put", added["read_cap"], "docs/alias.pdf")
    named = owner.cli("rm", oid, check=False)
    assert named.returncode != 0 and "named by" in named.stderr
    assert owner.json("rm", "docs/report.pdf")["objects_deleted"] == []
    assert catalog_has(owner, oid)
    wait_for(lambda: set(keys(reader, "docs")) == {"alias.pdf", "notes.txt"}, 30, "the reader to see the removal")
    out = tmp_path / "alias.pdf"
    reader.cli("get", "docs/alias.pdf", "-o", str(out))
    assert out.read_bytes() == f.read_bytes()

    # The owner's other device removes the last name of what the owner put: it signs the removal
    # with the bucket's owner key, and the object is deleted everywhere.
    wait_for(lambda: "alias.pdf" in keys(laptop, "docs"), 30, "the laptop to see the alias")
    assert laptop.json("rm", "docs/alias.pdf")["objects_deleted"] == [oid]
    wait_for(lambda: not catalog_has(owner, oid) and not catalog_has(other, oid), 30, "the object to be deleted")

    # Unshare: the old caps see nothing written after it, and the old write cap can no longer
    # delete what the bucket names (its objects moved to the new owner key); a new share works.
    before = owners(owner, notes_oid)
    unshared = owner.json("bucket", "unshare", "docs")
    assert unshared["epoch"] == 2
    owner.json("put", str(make_file(1000, "new.txt", seed=5)), "docs/after.txt")
    wait_for(lambda: heads_of_epoch(other, 2) >= 1, 30, "members to hold the new epoch's head")
    assert "after.txt" not in keys(reader, "docs") and "after.txt" not in keys(laptop, "docs")
    wait_for(lambda: owners(laptop, notes_oid) - before == owners(laptop, notes_oid) != set(), 30, "the new owner")
    assert laptop.json("rm", "docs/notes.txt")["objects_deleted"] == []
    assert catalog_has(other, notes_oid)
    laptop.json("bucket", "import", owner.json("bucket", "share", "docs", "--write")["cap"])
    assert set(keys(laptop, "docs")) == {"notes.txt", "after.txt"}

    # The owner's node is lost entirely, once the cloud placed what it wrote (objects and index
    # batches): a new device imports from the laptop's cap and reads.
    wait_for(lambda: placed_without(owner, other), 60, "the owner's objects to be placed on 3 members")
    owner.stop()
    shutil.rmtree(owner.home)
    fresh = daemons("fresh")
    fresh.cli("cloud", "join", invite(other), "--offer", "10GiB")
    fresh.json("bucket", "import", laptop.json("bucket", "share", "docs", "--write")["cap"], "--as", "mine")
    assert set(keys(fresh, "mine")) == {"notes.txt", "after.txt"}
    back = tmp_path / "again.txt"
    fresh.cli("get", "mine/notes.txt", "-o", str(back))
    assert back.read_bytes() == notes.read_bytes()

    # Removing the bucket: refused while it holds keys; with --force its keys go, and the objects
    # they named with them (the fresh device holds the owner key).
    assert fresh.cli("bucket", "rm", "mine", check=False).returncode == 7
    assert fresh.json("bucket", "rm", "mine", "--force")["keys_removed"] == 2
    assert fresh.json("bucket", "ls") == []
    wait_for(lambda: not catalog_has(other, notes_oid), 30, "the bucket's objects to be deleted")


def owners(d: Daemon, object_id: str) -> set[bytes]:
    """Owner keys with a live put of the object, as a node's catalog entries say."""
    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        rows = db.execute(
            "SELECT owner, kind, at FROM catalog_entries WHERE object_id = ? ORDER BY at",
            (bytes.fromhex(object_id),),
        ).fetchall()
    finally:
        db.close()
    latest: dict[bytes, int] = {}
    for owner, kind, _ in rows:
        latest[bytes(owner)] = int(kind)
    return {o for o, kind in latest.items() if kind == 1}


def placed_without(owner: Daemon, other: Daemon) -> bool:
    """Every object of the cloud is healthy on three members."""
    rows = other.json("status")["objects"]
    return bool(rows) and all(r["health"] == "healthy" and r["complete_copies"] >= 3 for r in rows)


def heads_of_epoch(d: Daemon, epoch: int) -> int:
    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM bucket_heads WHERE epoch = ?", (epoch,)).fetchone()[0])
    finally:
        db.close()
