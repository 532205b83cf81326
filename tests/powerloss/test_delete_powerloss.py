"""Power cuts on the delete path: the deleter's `rm`, and a holder carrying out another member's.

A cloud of two members: the one on crashfs and an admin on the real disk, each restored from
the same pristine copy for every cut. The cut points fall after a lead-in (both daemons up and
linked), in what the delete makes happen on the cut disk: the deleter signs its removal into
its catalog log and drops its copy; a holder learns the removal from the owner's log, forgets
the object, deletes its blocks and keeps a tombstone with a signed receipt.

After the cut the member's disk must hold the object whole and listed (the delete was not
durable yet; `rm` runs again) or not in its catalog at all, never half: no row names a block
the disk does not have whole, fsck is clean, and what the other member heard (a removal in the
log, a receipt) is on the disk. Then it restarts beside the other member and the delete
finishes everywhere: the object is gone from both catalogs and stores, every holder's receipt
reaches the deleter, no block of it is left behind (no row, no file), and `used` is the sum of
the rows.
"""

import sqlite3
from pathlib import Path
from typing import Any

from peercloud.cloud import deletion
from peercloud.identity import PeerId

from ..conftest import random_bytes, run_cli_async
from ..daemons import Daemon
from ..test_cloud import all_online
from .checks import durable_blocks, init_home, restart_checks
from .harness import Outcome, power_cuts, power_out
from .test_cloud_powerloss import CUTS, Member, free_port, invite, manifest_of, peer_of, restored, until

RM_TIMEOUT = 60.0  # seconds an `rm` may take (it waits up to 10 s for online holders' receipts)


def rows(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of a node's index, read outside node code (also while its daemon runs)."""
    db = sqlite3.connect(f"file:{home / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in db.execute(sql, args).fetchall()]
    finally:
        db.close()


def in_catalog(home: Path, oid: bytes) -> bool:
    return bool(rows(home, "SELECT 1 FROM catalog WHERE object_id = ?", oid))


def indexed(home: Path) -> dict[bytes, int]:
    """Every block the index names, with its size."""
    return {bytes(bid): int(size) for bid, size in rows(home, "SELECT id, size FROM blocks")}


def block_files(home: Path) -> set[bytes]:
    return {bytes.fromhex(p.name) for p in (home / "blocks").glob("*/*") if p.is_file()}


def tombstone(home: Path, oid: bytes) -> int | None:
    found = rows(home, "SELECT status FROM tombstones WHERE object_id = ?", oid)
    return int(found[0][0]) if found else None


def report(d: Daemon, oid: str) -> dict[str, Any]:
    """The deletion report of an object this daemon deleted ({} while it has none)."""
    found: dict[str, Any] = d.json("status", oid).get("deletion", {})
    return found


def answered(d: Daemon, oid: str, holders: set[str]) -> bool:
    """The delete is done as `d`, its issuer, sees it: every holder receipted it deleted."""
    r = report(d, oid)
    return bool(r) and holders <= set(r["deleted"]) and not r["pending"] and not r["kept"]


def space_counted(d: Daemon) -> bool:
    """The daemon's `used` is the sum of its index's block rows."""
    return int(d.json("status", "--node")["stored_bytes"]) == sum(indexed(d.home).values())


def assert_deleted(home: Path, oid: bytes, blocks: set[bytes], who: str) -> None:
    """Nothing of the object is left on a stopped node: no catalog row, record, block row or file."""
    assert not in_catalog(home, oid), f"the object is back in the catalog of {who}"
    assert not rows(home, "SELECT 1 FROM objects WHERE id = ?", oid), f"{who} still lists the object"
    assert not rows(home, "SELECT 1 FROM holds WHERE object_id = ?", oid), f"{who} still holds the object"
    left = blocks & set(indexed(home))
    assert not left, f"{len(left)} block(s) of the deleted object are still indexed on {who}"
    strays = block_files(home) - set(indexed(home))
    assert not strays, f"{len(strays)} block file(s) no row names are left on {who}"
    assert tombstone(home, oid) == deletion.DELETED, f"{who} keeps no tombstone of its deletion"


def proved_on(watcher: Daemon, oid: str, peers: set[str]) -> bool:
    """Every block of the object proved on each of `peers`, as `watcher` sees it."""
    s = watcher.json("status", oid)
    proved = {h["peer_id"] for h in s["holders"] if len(h["confirmed"]) == s["total_blocks"]}
    return peers <= proved


def linked(member: Member, homes: tuple[Path, Path, dict[str, int]], mnt: Path) -> bool:
    """The lead-in: the other member restored, the member on the mount started and linked to it,
    then killed (the moment under test comes next)."""
    pristine, run, ports = homes
    with restored(pristine, run, ports), member.running(mnt / "home") as d:
        up = d is not None and until(lambda: all_online(d, 2), mnt)
        if d is not None:
            d.kill()
        return up


def rm_until_done(d: Daemon, oid: str, mnt: Path | None) -> bool:
    """`rm` through the daemon `d`; True when it succeeded. With the power gone (the member on
    `mnt` is killed then), it is not waited on any longer."""
    proc = run_cli_async(d.home, "rm", oid, "--json")
    try:
        until(lambda: proc.poll() is not None, mnt, RM_TIMEOUT)
        if proc.poll() is None and mnt is not None and power_out(mnt):
            return False
        proc.wait(timeout=RM_TIMEOUT)
        return proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def scenario_deleter(tmp_path: Path, cuts: int) -> None:
    """The owner on the cut disk deletes its object, placed on the other member too."""
    pristine, run = tmp_path / "pristine", tmp_path / "run"
    ports = {"admin": free_port()}
    member = Member(tmp_path, free_port())
    init_home(pristine)
    me = peer_of(pristine / "home")
    src = tmp_path / "doomed.bin"
    src.write_bytes(random_bytes(3 * 1024 * 1024 + 7, seed=23))
    with restored(tmp_path, pristine, ports) as started:
        admin = started["admin"]
        admin.cli("cloud", "create", "lab", "--offer", "10GiB")
        with member.running(pristine / "home") as d:
            assert d is not None
            d.cli("cloud", "join", invite(admin), "--offer", "10GiB")
            oid = d.json("add", str(src), "--class", "replica-2")["object_id"]
            assert until(lambda: proved_on(admin, oid, {me, admin.peer_id}), None), "replica-2 did not settle"
        them = admin.peer_id
    manifest = manifest_of(pristine / "home", oid)
    key = bytes.fromhex(oid)
    blocks = {bid for _, _, bid in manifest.blocks()} | {key}
    said: dict[str, bool] = {}  # whether the run's `rm` reported success

    def workload(mnt: Path) -> bool:
        said["rm"] = False
        with restored(pristine, run, ports), member.running(mnt / "home") as d:
            if d is None or not until(lambda: all_online(d, 2), mnt):
                return False
            try:
                said["rm"] = rm_until_done(d, oid, mnt)
                return said["rm"] and until(lambda: answered(d, oid, {me, them}), mnt)
            finally:
                d.kill()  # the power goes right after: a clean stop would only add a checkpoint

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        listed = in_catalog(home, key)
        if said["rm"]:
            assert not listed, "an rm that reported success is undone after the cut"
        if not in_catalog(run / "admin", key):
            assert not listed, "the other member has the removal, the deleter's disk not"
        if listed:  # the delete was not durable yet: the object is whole and listed
            assert blocks <= durable_blocks(home), "the object is listed, but blocks of it are gone"
        # A record left (the removal durable, the deletion not) must read back whole too.
        restart_checks(home, {src.name: src.read_bytes()}, {src.name} if listed else set(), tmp_path)
        with restored(run, run / "again", ports) as others, member.running(home) as d:
            assert d is not None
            assert until(lambda: all_online(d, 2), None), "the members did not link again after the cut"
            if listed:
                assert rm_until_done(d, oid, None), "rm does not work again after a cut that undid it"
            assert until(lambda: answered(d, oid, {me, them}), None), "the delete did not finish everywhere"
            assert until(lambda: space_counted(d), None), "used is not the sum of the block rows"
            assert not in_catalog(others["admin"].home, key)
        assert_deleted(home, key, blocks, "the deleter")
        assert_deleted(run / "again" / "admin", key, blocks, "the other member")

    try:
        power_cuts(
            pristine,
            run,
            workload,
            check,
            cuts,
            seed=17,
            torn=0.5,
            lead_in=lambda mnt: linked(member, (pristine, run, ports), mnt),
        )
    finally:
        member.log.close()


def scenario_holder(tmp_path: Path, cuts: int) -> None:
    """The member on the cut disk holds a copy of the other's object; the owner deletes it."""
    pristine, run = tmp_path / "pristine", tmp_path / "run"
    ports = {"admin": free_port()}
    member = Member(tmp_path, free_port())
    init_home(pristine)
    me = peer_of(pristine / "home")
    with restored(tmp_path, pristine, ports) as started:
        admin = started["admin"]
        admin.cli("cloud", "create", "lab", "--offer", "10GiB")
        src = tmp_path / "theirs.bin"
        src.write_bytes(random_bytes(3 * 1024 * 1024 + 9, seed=24))
        with member.running(pristine / "home") as d:
            assert d is not None
            d.cli("cloud", "join", invite(admin), "--offer", "10GiB")
            oid = admin.json("add", str(src), "--class", "replica-2")["object_id"]
            assert until(lambda: proved_on(admin, oid, {me, admin.peer_id}), None), "replica-2 did not settle"
        owner = admin.peer_id
    manifest = manifest_of(pristine / "admin", oid)
    key = bytes.fromhex(oid)
    blocks = {bid for _, _, bid in manifest.blocks()} | {key}
    assert blocks <= durable_blocks(pristine / "home"), "the member holds no copy to delete"

    def workload(mnt: Path) -> bool:
        with restored(pristine, run, ports) as others, member.running(mnt / "home") as d:
            if d is None or not until(lambda: all_online(d, 2), mnt):
                return False
            try:
                rm = run_cli_async(others["admin"].home, "rm", oid, "--json")
                done = until(lambda: answered(others["admin"], oid, {me, owner}), mnt)
            finally:
                d.kill()  # the power goes right after: a clean stop would only add a checkpoint
            try:
                _, err = rm.communicate(timeout=RM_TIMEOUT)  # the owner's disk is whole: its rm succeeds
            finally:
                if rm.poll() is None:
                    rm.kill()
                    rm.communicate()
            assert rm.returncode == 0, err
            return done

    def check(mnt: Path, outcome: Outcome) -> None:
        home = mnt / "home"
        sql = "SELECT status FROM delete_receipts WHERE object_id = ? AND peer = ?"
        receipted = rows(run / "admin", sql, key, PeerId.parse(me).public_key)
        if receipted:  # a receipt sent is backed by the disk
            assert tombstone(home, key) == deletion.DELETED, "the holder sent a receipt its disk does not keep"
            assert not in_catalog(home, key) and not set(indexed(home)) & blocks, "receipted, yet not deleted"
        restart_checks(home, {}, set(), tmp_path)
        with restored(run, run / "again", ports) as others, member.running(home) as d:
            assert d is not None
            assert until(lambda: answered(others["admin"], oid, {me, owner}), None), (
                "the holder did not delete the object (or receipt it) after the cut"
            )
            assert until(lambda: space_counted(d), None), "used is not the sum of the block rows"
        assert_deleted(home, key, blocks, "the holder")
        assert_deleted(run / "again" / "admin", key, blocks, "the owner")

    try:
        power_cuts(
            pristine,
            run,
            workload,
            check,
            cuts,
            seed=18,
            torn=0.5,
            lead_in=lambda mnt: linked(member, (pristine, run, ports), mnt),
        )
    finally:
        member.log.close()


def test_power_cut_while_deleting_an_object_as_its_owner(tmp_path: Path) -> None:
    scenario_deleter(tmp_path, CUTS)


def test_power_cut_while_a_holder_deletes_another_members_object(tmp_path: Path) -> None:
    scenario_holder(tmp_path, CUTS)
