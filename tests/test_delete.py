"""Deletion with the holders' agreement: `rm` erases an object on every member that holds it,
an offline holder deletes it when it returns, a member that keeps its pins refuses visibly, a
member that says it deleted but still proves blocks is shown as keeping them, outsiders that
fetched it are outside the owner's control, and space comes back."""

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peercloud.cloud import catalog, deletion
from peercloud.cloud.catalog import Batch, Op
from peercloud.cloud.document import Invite
from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.identity import PeerId
from peercloud.net.link import PeerLink
from peercloud.wire import messages as m

from .daemons import Daemon, wait_for
from .test_cloud import Raw, all_online, health, invite, make_cloud

Start = Callable[..., Daemon]


def used(d: Daemon) -> int:
    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM blocks").fetchone()[0])
    finally:
        db.close()


def block_files(d: Daemon) -> int:
    return sum(1 for p in (d.home / "blocks").rglob("*") if p.is_file())


class Keeper(Raw):
    """A member that fetches an object's blocks, answers audits truthfully, and then says it deleted it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[bytes, bytes] = {}

        def answer(lk: PeerLink, msg: m.Message) -> None:
            if isinstance(msg, m.Audit) and msg.block in self.blocks:
                proof = merkle.prove(self.blocks[msg.block], msg.leaf)
                lk.respond(msg.id, m.Proof(msg.id, msg.block, msg.leaf, proof.path), proof.leaf)
            elif isinstance(msg, m.Audit | m.GetBlock):
                lk.respond(msg.id, m.Error(msg.id, "not_found", "no"))
            elif isinstance(msg, m.Place):
                lk.respond(msg.id, m.Error(msg.id, "refused", "full"))

        self.answer = answer

    def fetch(self, link: PeerLink, block_id: bytes) -> bytes:
        async def go() -> bytes:
            reply = await link.call(m.GetBlock(link.next_id(), block_id), 10)
            return bytes(reply.payload)

        data: bytes = self.run(go())
        assert merkle.block_id(data) == block_id
        self.blocks[block_id] = data
        return data


def restart_keeping_pins(daemons: Start, d: Daemon) -> Daemon:
    port = d.port
    assert d.stop() == 0
    config = d.home / "config.toml"
    config.write_text(config.read_text().replace("keep_pins = false", "keep_pins = true"))
    return daemons(d.home.name, port)


def test_rm_reports_deleted_pending_refused_kept_and_outside_control(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    admin, owner, pinner, away = make_cloud(daemons, 4)
    pinner = restart_keeping_pins(daemons, pinner)
    for d in (admin, owner, pinner, away):
        wait_for(lambda d=d: all_online(d, 4), what="all members online again")
    added = owner.json("add", str(make_file(2_500_000, name="doomed.bin")), "--class", "replica-2")
    oid, cap = added["object_id"], added["read_cap"]
    wait_for(lambda: health(admin, oid)["health"] == "healthy", 60, "placement")
    pinner.json("pin", cap)  # by hand, and pinner keeps its pins
    away.json("pin", cap)  # by hand too, but away does not keep pins from a delete
    # An outsider (no member) pins the object from the owner with its verify cap.
    outsider = daemons("outsider")
    outsider.cli("peers", "add", owner.address)
    outsider.json("pin", added["verify_cap"])
    # A member that proves it holds every block, then will claim it deleted them.
    keeper = Keeper()
    try:
        inv = Invite.parse(invite(admin))
        link = keeper.connect(admin)
        keeper.call(link, lambda i: m.Join(i, inv.cloud_id, inv.secret, 10**9))
        to_owner = keeper.connect(owner)
        manifest = Manifest.decode(keeper.fetch(to_owner, bytes.fromhex(oid)))
        ids = [bid for _, _, bid in manifest.blocks()]
        for bid in ids:
            keeper.fetch(to_owner, bid)
        keeper.notify(to_owner, m.Have(bytes.fromhex(oid), b"\xff" * ((len(ids) + 7) // 8)))
        kid = str(keeper.identity.peer_id)
        wait_for(
            lambda: any(h["peer_id"] == kid and h["confirmed"] for h in health(owner, oid)["holders"]),
            30,
            "keeper proved",
        )

        before = {d.home.name: used(d) for d in (admin, owner, pinner, away)}
        away_port = away.port
        assert away.stop() == 0
        # Nobody but an owner or an admin may delete it.
        refused = pinner.cli("rm", oid, check=False)
        assert refused.returncode == 7 and "not yours" in refused.stderr

        # Now the keeper says it deleted: its receipt is signed by itself, as any holder's.
        def lie() -> None:
            r = deletion.Receipt.sign(keeper.identity, inv.cloud_id, bytes.fromhex(oid), deletion.DELETED, time.time())
            keeper.notify(to_owner, m.DeleteReceipts((r.encode(),)))

        report = owner.json("rm", oid)
        lie()
        assert report["object_id"] == oid
        assert owner.peer_id in report["deleted"] and pinner.peer_id in report["refused"], report
        assert away.peer_id in report["pending"]
        assert outsider.peer_id in report["outside_control"]
        wait_for(lambda: kid in owner.json("status", oid)["deletion"]["kept"], 20, "the keeper shown as keeping it")
        # Space comes back on every member that deleted; the refuser keeps its copy and says so.
        for d in (admin, owner):
            if before[d.home.name]:
                wait_for(lambda d=d: used(d) < before[d.home.name], 20, f"{d.home.name} to free space")
        assert used(pinner) == before[pinner.home.name]
        for d in (admin, owner, pinner):
            assert d.json("fsck")["ok"]
        # The holder that was away deletes it when it comes back, before its HAVEs count.
        away = daemons(away.home.name, away_port)
        wait_for(
            lambda: away.peer_id in owner.json("status", oid)["deletion"]["deleted"], 60, "away to delete on return"
        )
        assert used(away) < before[away.home.name] and away.json("fsck")["ok"]
        final = owner.json("status", oid)["deletion"]
        assert final["pending"] == [] and final["refused"] == [pinner.peer_id] and kid in final["kept"]
        out = owner.cli("status", oid).stdout
        assert "refused" in out and "outside control" in out
    finally:
        keeper.close()
    # Every member restarted: nothing comes back (the owner's log holds the removal).
    restarted = []
    for d in (admin, owner, pinner, away):
        port = d.port
        assert d.stop() == 0
        restarted.append(daemons(d.home.name, port))
    for r in restarted:  # the four real members (the keeper is gone)
        wait_for(lambda r=r: sum(x["online"] for x in r.json("cloud", "members")["members"]) == 4, 30, "members back")
    time.sleep(2)
    for name in ("p0", "p1", "p3"):
        db = sqlite3.connect(tmp_path / name / "index.sqlite")
        try:
            assert db.execute("SELECT 1 FROM catalog WHERE object_id = ?", (bytes.fromhex(oid),)).fetchone() is None
            assert db.execute("SELECT 1 FROM objects WHERE id = ?", (bytes.fromhex(oid),)).fetchone() is None
        finally:
            db.close()


def test_an_admin_erases_outright_and_forged_or_unauthorized_deletes_change_nothing(
    daemons: Start, make_file: Callable[..., Path]
) -> None:
    admin, owner, other = make_cloud(daemons, 3)
    a = owner.json("add", str(make_file(300_000, name="a.bin", seed=1)), "--class", "replica-2")["object_id"]
    b = owner.json("add", str(make_file(300_000, name="b.bin", seed=2)), "--class", "replica-2")["object_id"]
    for oid in (a, b):
        wait_for(lambda oid=oid: health(admin, oid)["health"] == "healthy", 60, "placement")
    raw = Raw()
    try:
        inv = Invite.parse(invite(admin))
        link = raw.connect(admin)
        raw.call(link, lambda i: m.Join(i, inv.cloud_id, inv.secret, 10**9))
        links = [link, raw.connect(owner), raw.connect(other)]
        # A member that is no admin signs an erase into its own log: kept, and it ends nothing.
        erase = Batch.sign(
            raw.identity,
            inv.cloud_id,
            1,
            catalog.NO_PREV,
            time.time(),
            [Op(catalog.ERASE, bytes.fromhex(a), time.time())],
        )
        for lk in links:
            raw.notify(lk, m.CatalogBatch(erase.encode()))
        key = raw.identity.peer_id.public_key

        def raw_head(d: Daemon) -> Any:
            db = sqlite3.connect(d.home / "index.sqlite")
            try:
                return db.execute("SELECT MAX(seq) FROM catalog_log WHERE author = ?", (key,)).fetchone()[0]
            finally:
                db.close()

        wait_for(lambda: all(raw_head(d) == 1 for d in (admin, owner, other)), 20, "the raw member's batch kept")
        for d in (admin, owner, other):
            assert health(d, a)["health"] == "healthy" and "deletion" not in health(d, a)
        # A member deletes nothing it does not own; an admin erases outright, on every holder.
        refused = other.cli("rm", a, check=False)
        assert refused.returncode == 7 and "not yours" in refused.stderr
        report = admin.json("rm", a)
        holders = set(report["deleted"]) | set(report["pending"])
        assert report["pending"] == [] and owner.peer_id in holders and len(holders) >= 2
        for d in (admin, owner, other):
            wait_for(lambda d=d: a not in [o["object_id"] for o in d.json("ls")], 20, f"{d.home.name} to drop it")
        # Receipts in someone else's name are not read; a forged one of its own closes the link.
        kid = raw.identity.peer_id
        stolen = deletion.Receipt.sign(raw.identity, inv.cloud_id, bytes.fromhex(a), deletion.DELETED, time.time())
        other_name = bytearray(stolen.encode())
        other_name[49:81] = PeerId.parse(other.peer_id).public_key
        raw.notify(links[0], m.DeleteReceipts((bytes(other_name),)))
        forged = bytearray(stolen.encode())
        forged[-1] ^= 1
        raw.notify(links[0], m.DeleteReceipts((bytes(forged),)))
        wait_for(lambda: links[0].closed.done(), 10, "the forger's link to close")
        assert str(kid) not in admin.json("status", a)["deletion"]["deleted"]
    finally:
        raw.close()
    assert health(owner, b)["health"] == "healthy"  # the other object is untouched

    def owner_entry(d: Daemon) -> Any:
        db = sqlite3.connect(d.home / "index.sqlite")
        try:
            key = bytes.fromhex(a), PeerId.parse(owner.peer_id).public_key
            return db.execute("SELECT kind FROM catalog_entries WHERE object_id = ? AND owner = ?", key).fetchone()
        finally:
            db.close()

    # The owner logs its own removal too, so the erase outlives the admin's log.
    wait_for(lambda: all(owner_entry(d) == (catalog.REMOVE,) for d in (admin, owner, other)), 20, "owner's removal")
    again = admin.cli("rm", a, check=False)
    assert again.returncode != 0 and "deleted already" in again.stderr
