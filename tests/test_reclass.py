"""Changing an object's class: in place within a coding, as a new object across codings, and for
every object of a class when an admin redefines it."""

from collections.abc import Callable
from pathlib import Path

from .daemons import Daemon, wait_for
from .test_cloud import health, make_cloud

Start = Callable[..., Daemon]


def copies(d: Daemon, oid: str) -> int:
    s = health(d, oid)
    return sum(1 for h in s["holders"] if h["online"] and len(h["confirmed"]) == s["total_blocks"])


def test_reclass_within_a_coding_re_places_and_across_codings_makes_a_new_object(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    admin, owner, m2, m3 = make_cloud(daemons, 4)
    src = make_file(1_500_000, name="photo.jpg")
    added = owner.json("add", str(src), "--class", "replica-2")
    oid = added["object_id"]
    wait_for(lambda: health(admin, oid)["health"] == "healthy" and copies(admin, oid) == 2, 60, "replica-2 placed")
    # Only an owner changes the class.
    refused = m2.cli("reclass", oid, "replica-3", check=False)
    assert refused.returncode == 7 and "not yours" in refused.stderr
    unknown = owner.cli("reclass", oid, "replica-9", check=False)
    assert unknown.returncode == 2 and "no class" in unknown.stderr
    done = owner.json("reclass", oid, "replica-3")
    assert done == {"object_id": oid, "class": "replica-3", "new_object": False, "replaced": None, "deletion": None}
    wait_for(lambda: health(admin, oid)["class"] == "replica-3" and copies(admin, oid) == 3, 60, "a third copy")
    assert health(m3, oid)["health"] == "healthy"
    # Across codings the blocks differ: a new object, the old one deleted on every holder.
    moved = owner.json("reclass", oid, "ec-2+1")
    new = moved["object_id"]
    assert moved["new_object"] and moved["replaced"] == oid and new != oid
    assert moved["deletion"]["pending"] == [] and owner.peer_id in moved["deletion"]["deleted"]
    wait_for(lambda: health(admin, new)["health"] == "healthy", 60, "the new object placed as ec-2+1")
    assert health(admin, new)["class"] == "ec-2+1" and health(admin, new)["coding"] == {"k": 2, "n": 3}
    for d in (admin, m2, m3):
        assert oid not in [o["object_id"] for o in d.json("ls")]
    out = tmp_path / "back.jpg"
    owner.cli("get", owner.json("info", new)["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()


def test_redefining_a_class_re_places_its_objects_and_keeps_its_coding(
    daemons: Start, make_file: Callable[..., Path]
) -> None:
    admin, owner, _, _ = make_cloud(daemons, 4)
    admin.cli("class", "add", "team", "--replicas", "2")
    oid = owner.json("add", str(make_file(800_000, name="doc.pdf")), "--class", "team")["object_id"]
    wait_for(lambda: copies(admin, oid) == 2 and health(admin, oid)["health"] == "healthy", 60, "two copies")
    changed = admin.cli("class", "add", "team", "--ec", "2+1", check=False)
    assert changed.returncode == 7 and "keeps the coding" in changed.stderr
    admin.cli("class", "add", "team", "--replicas", "3")
    wait_for(lambda: copies(admin, oid) == 3 and health(admin, oid)["health"] == "healthy", 60, "a third copy")
    assert next(c for c in owner.json("class", "ls") if c["name"] == "team")["replicas"] == 3
