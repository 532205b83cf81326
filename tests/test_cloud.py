"""The cloud with real daemons on loopback: membership, placement, the ledger, repair, pin/unpin."""

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from peercloud.cloud.document import Invite, SignedDoc
from peercloud.cloud.placement import peer_hash
from peercloud.identity import Identity, PeerId
from peercloud.net.link import Address, PeerError, PeerLink, dial
from peercloud.wire import messages as m

from .daemons import Daemon, wait_for

Start = Callable[..., Daemon]


def invite(admin: Daemon, *args: str) -> str:
    return admin.cli("cloud", "invite", *args).stdout.strip().splitlines()[-1]


def make_cloud(start: Start, size: int, offer: str = "10GiB") -> list[Daemon]:
    admin = start("p0")
    admin.cli("cloud", "create", "lab", "--offer", offer, "--tag", "site=s0")
    peers = [admin]
    for i in range(1, size):
        d = start(f"p{i}")
        d.cli("cloud", "join", invite(admin), "--offer", offer, "--tag", f"site=s{i}")
        peers.append(d)
    for d in peers:
        wait_for(lambda d=d: all_online(d, size), what=f"{d.home.name} to see all {size} members online")
    return peers


def all_online(d: Daemon, size: int) -> bool:
    members = d.json("cloud", "members")["members"]
    return len(members) == size and all(x["online"] for x in members)


def health(d: Daemon, object_id: str) -> Any:
    return d.json("status", object_id)


def settled(d: Daemon, object_id: str, holders: int, state: str = "healthy") -> bool:
    """In `state`, on `holders` peers, every share proved exactly once (the owner's extras released)."""
    s = health(d, object_id)
    proved = [h for h in s["holders"] if h["confirmed"]]
    once = sum(len(h["confirmed"]) for h in proved) == s["total_blocks"]
    return bool(s["health"] == state and len(proved) == holders and once)


class Raw:
    """A hand-driven peer (its own event loop thread) for what a real daemon would never send."""

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.answer: Callable[[PeerLink, m.Message], None] = lambda lk, msg: None
        self.notices: list[m.Message] = []  # every notice daemons sent us

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def connect(self, d: Daemon) -> PeerLink:
        async def go() -> PeerLink:
            async def on_request(lk: PeerLink, msg: m.Message) -> None:
                self.answer(lk, msg)

            hello = m.Hello(m.PROTOCOL_VERSION, ("blocks", "cloud"), "raw")
            return await dial(
                Address.parse(d.state["listen"][0]),
                self.identity,
                hello,
                on_request,
                on_notice=lambda lk, msg: self.notices.append(msg),
            )

        link: PeerLink = self.run(go())
        return link

    def call(self, link: PeerLink, make: Callable[[int], m.Request]) -> Any:
        async def go() -> Any:
            return await link.call(make(link.next_id()), 10)

        return self.run(go())

    def notify(self, link: PeerLink, msg: m.Notice) -> None:
        self.loop.call_soon_threadsafe(link.notify, msg)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_membership_invites_and_refusals(daemons: Start) -> None:
    admin, member = make_cloud(daemons, 2)
    members = member.json("cloud", "members")
    assert {x["role"] for x in members["members"]} == {"admin", "member"}
    assert {x["tags"]["site"] for x in members["members"]} == {"s0", "s1"}
    assert members["version"] == admin.json("cloud", "members")["version"] == 2
    # A member cannot invite; a used or expired invite is refused; nothing changes.
    refused = member.cli("cloud", "invite", check=False)
    assert refused.returncode == 7 and "only an admin" in refused.stderr
    used = invite(admin)
    third = daemons("third")
    assert third.cli("cloud", "join", used).returncode == 0
    fourth = daemons("fourth")
    again = fourth.cli("cloud", "join", used, check=False)
    assert again.returncode == 7 and "already used" in again.stderr
    expired = invite(admin, "--expires", "1ms")
    late = fourth.cli("cloud", "join", expired, check=False)
    assert late.returncode == 7 and "expired" in late.stderr
    tampered = used[:-2] + ("a" if used[-2] != "a" else "b") + used[-1]
    bad = fourth.cli("cloud", "join", tampered, check=False)
    assert bad.returncode == 2 and "invite token" in bad.stderr
    assert fourth.cli("cloud", "members", check=False).returncode == 3  # in no cloud
    wait_for(lambda: len(member.json("cloud", "members")["members"]) == 3, what="gossip of the third member")
    # The admin removes a member; a member leaves; every remaining member learns it.
    admin.cli("cloud", "remove", third.peer_id)
    wait_for(lambda: len(member.json("cloud", "members")["members"]) == 2, what="gossip of the removal")
    wait_for(lambda: third.cli("cloud", "members", check=False).returncode == 3, what="the removed node to know")
    member.cli("cloud", "leave")
    assert len(admin.json("cloud", "members")["members"]) == 1
    assert "lab" not in member.cli("cloud", "members", check=False).stdout


def test_forged_documents_and_outsiders_are_refused(daemons: Start, make_file: Callable[..., Path]) -> None:
    admin, member = make_cloud(daemons, 2)
    # An outsider cannot ask a member to store, pin or release anything.
    raw = Raw()
    try:
        link = raw.connect(admin)
        oid = os.urandom(32)
        for make in (
            lambda i: m.Place(i, oid, (0,), "replica-3"),
            lambda i: m.Release(i, oid, (0,)),
        ):
            with pytest.raises(PeerError) as e:
                raw.call(link, make)
            assert e.value.code == "refused"
        # Join with a made-up secret: refused, nothing changes.
        current = SignedDoc.decode(bytes.fromhex(admin_doc_hex(admin)))
        with pytest.raises(PeerError, match="not issued"):
            raw.call(link, lambda i: m.Join(i, current.doc.cloud_id, os.urandom(32), 1))
        # Only members hear the document: an outsider sending one (even a valid old one) gets
        # nothing back, and cannot fetch versions.
        raw.notify(link, m.CloudDoc(current.encode()))
        with pytest.raises(PeerError) as e:
            raw.call(link, lambda i: m.CloudDocWant(i, current.doc.cloud_id, 1))
        assert e.value.code == "refused"
        assert not any(isinstance(x, m.CloudDoc) for x in raw.notices)
    finally:
        raw.close()
    # The member's own key rewriting the document (making itself admin), and a tampered document,
    # sent over the member's own authenticated link.
    member_key = Identity.load(member.home / "node.key")
    assert member.stop() == 0
    wait_for(lambda: not any(x["online"] for x in admin.json("cloud", "members")["members"] if not x["self"]))
    before = admin.json("cloud", "members")
    impostor = Raw(member_key)
    try:
        link = impostor.connect(admin)
        forged = SignedDoc.create(current.doc.with_role(member_key.peer_id, "admin"), member_key)
        impostor.notify(link, m.CloudDoc(forged.encode()))
        tampered = bytearray(current.encode())
        tampered[tampered.index(b"lab")] ^= 0x01  # inside the signed body
        impostor.notify(link, m.CloudDoc(bytes(tampered)))
        wait_for(lambda: (admin.home / "daemon.log").read_text().count("refused cloud document") >= 2)
    finally:
        impostor.close()
    assert admin.json("cloud", "members")["version"] == before["version"]
    log = (admin.home / "daemon.log").read_text()
    assert f"who is not an admin of version {current.doc.seq}" in log and "forged or altered" in log


def admin_doc_hex(d: Daemon) -> str:
    import sqlite3

    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        return bytes(db.execute("SELECT doc FROM cloud").fetchone()[0]).hex()
    finally:
        db.close()


def test_placement_spreads_replicas_and_shares(daemons: Start, make_file: Callable[..., Path], tmp_path: Path) -> None:
    peers = make_cloud(daemons, 5)
    owner = peers[1]
    rep = owner.json("add", str(make_file(3_000_000, name="r.bin")), "--class", "replica-3")
    src = make_file(3_000_000, name="e.bin")
    ec = owner.json("add", str(src), "--class", "ec-2+1")
    for d in peers:
        wait_for(lambda d=d: health(d, rep["object_id"])["health"] == "healthy", 60, f"replica-3 healthy on {d}")
        wait_for(lambda d=d: settled(d, ec["object_id"], 3), 60, f"ec-2+1 placed and healthy on {d}")
    r = health(peers[3], rep["object_id"])
    assert r["complete_copies"] == 3 and r["redundancy"]["available"] == 3
    e = health(peers[3], ec["object_id"])
    assert e["redundancy"] == {"available": 3, "target": 3, "needed": 2, "crowded": 1, "can_lose": 1, "tolerance": 1}
    # Each share column sits on its own peer: three holders, none with more than one column.
    holders = [h for h in e["holders"] if h["confirmed"]]
    columns = [{i % 3 for i in h["confirmed"]} for h in holders]
    assert len(holders) == 3 and all(len(c) == 1 for c in columns) and set().union(*columns) == {0, 1, 2}
    summary = peers[4].json("status")
    assert summary["counts"]["healthy"] == 2
    out = tmp_path / "back.bin"
    peers[4].json("get", ec["read_cap"], "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    human = peers[0].cli("status", rep["object_id"]).stdout
    assert "healthy" in human and "█" in human


def holders_with_copy(d: Daemon, object_id: str) -> list[str]:
    status = health(d, object_id)
    total = status["total_blocks"]
    return [h["peer_id"] for h in status["holders"] if h["online"] and len(h["confirmed"]) == total]


def test_two_losses_with_replica_3_stay_readable_and_heal(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    peers = make_cloud(daemons, 5)
    peers[0].cli("class", "add", "fast-3", "--replicas", "3", "--grace", "6s")
    src = make_file(4_000_000, name="precious.bin")
    added = peers[2].json("add", str(src), "--class", "fast-3")
    oid = added["object_id"]
    wait_for(lambda: health(peers[0], oid)["health"] == "healthy", 60, "placement")
    by_id = {d.peer_id: d for d in peers}
    holding = holders_with_copy(peers[0], oid)
    assert len(holding) == 3
    # The owner goes first when it holds a copy (repair must not need it); peers[0] watches.
    # A grace of 6 s keeps the loss visible long enough for a CLI poll to see it before repair.
    owner = peers[2].peer_id
    gone = [by_id[p] for p in sorted(holding, key=lambda p: p != owner) if by_id[p] is not peers[0]][:2]
    ports = {d.home.name: d.port for d in gone}
    for d in gone:
        assert d.stop() == 0
    left = [d for d in peers if d not in gone]
    watcher = left[0]
    wait_for(lambda: health(watcher, oid)["health"] in ("at risk", "degraded"), 30, "the loss to show")
    out = tmp_path / "still.bin"
    left[-1].json("get", added["read_cap"], "-o", str(out))  # readable from the one copy left
    assert out.read_bytes() == src.read_bytes()
    wait_for(lambda: health(watcher, oid)["health"] == "healthy", 90, "repair to three online copies")
    assert len(holders_with_copy(watcher, oid)) == 3
    # The lost holders come back: the object is above its max of 3, and the extras are released.
    for d in gone:
        daemons(d.home.name, ports[d.home.name])
    wait_for(lambda: all_online(watcher, 5), 30, "the holders to return")
    wait_for(lambda: len(holders_with_copy(watcher, oid)) == 3, 90, "extras to be released")
    assert health(watcher, oid)["health"] == "healthy"


def test_ec_4_2_with_three_losses_is_reported_lost(daemons: Start, make_file: Callable[..., Path]) -> None:
    peers = make_cloud(daemons, 5)
    added = peers[1].json("add", str(make_file(3_000_000, name="wide.bin")), "--class", "ec-4+2")
    oid = added["object_id"]
    names = ", ".join(f"{d.home.name} {d.peer_id[:13]}" for d in peers)  # to read a failure's logs by

    # 6 shares on 5 peers: one peer holds 2, so losing it and one more leaves 3 < 4 shares. Health is
    # honest about it: f = 1 below the class's tolerance of m = 2 is "degraded", never "healthy 6/6".
    wait_for(lambda: settled(peers[0], oid, 5, "degraded"), 120, f"ec-4+2 placement to settle ({names})")
    s = health(peers[0], oid)
    assert s["redundancy"]["crowded"] == 2 and "one peer" in s["note"]
    assert s["redundancy"]["can_lose"] == 1 and s["redundancy"]["tolerance"] == 2
    holders = [h["peer_id"] for h in s["holders"] if h["confirmed"] and not h["self"]]
    victims = [d for d in peers if d.peer_id in holders][:3]
    for d in victims:
        assert d.stop() == 0
    survivor = next(d for d in peers if d not in victims)
    try:
        wait_for(lambda: health(survivor, oid)["health"] == "lost", 30, "the object to be reported lost")
    except AssertionError as e:
        seen = health(survivor, oid)
        rows = [f"{h['peer_id'][:13]} online={h['online']} proved={len(h['confirmed'])}" for h in seen["holders"]]
        raise AssertionError(f"{e}: {survivor.home.name} says {seen['health']}; {rows}; peers: {names}") from None
    assert survivor.json("status")["counts"]["lost"] == 1


class Liar(Raw):
    """A member that says yes to every placement, claims every block, and proves nothing.

    Its key is chosen farther from the object than every real member's, so it is never the
    object's coordinator (a coordinator that does nothing only delays repair by the takeover
    time, which this test need not wait for).
    """

    def __init__(self, far_from: bytes, than: list[PeerId]) -> None:
        target = int.from_bytes(far_from, "big")
        farthest = max(peer_hash(p.public_key) ^ target for p in than)
        while True:
            identity = Identity.generate()
            if peer_hash(identity.peer_id.public_key) ^ target > farthest:
                break
        super().__init__(identity)
        self.audited = 0

        def answer(lk: PeerLink, msg: m.Message) -> None:
            if isinstance(msg, m.Place):
                lk.respond(msg.id, m.Ok(msg.id))
            elif isinstance(msg, m.Audit):
                self.audited += 1
                lk.respond(msg.id, m.Proof(msg.id, msg.block, msg.leaf, (os.urandom(32),)), os.urandom(100))
            elif isinstance(msg, m.GetBlock):
                lk.respond(msg.id, m.BlockData(msg.id, msg.block), os.urandom(1000))

        self.answer = answer


def test_a_member_lying_in_have_counts_for_nothing(
    daemons: Start, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    peers = make_cloud(daemons, 3)
    admin = peers[0]
    admin.cli("class", "add", "fast-2", "--replicas", "2", "--grace", "1s")
    src = make_file(3_000_000, name="x.bin")
    added = peers[1].json("add", str(src), "--class", "fast-2")
    oid = added["object_id"]
    total = added["blocks"] - 1
    liar = Liar(far_from=bytes.fromhex(oid), than=[Identity.load(d.home / "node.key").peer_id for d in peers])
    try:
        link = liar.connect(admin)
        inv = Invite.parse(invite(admin))
        liar.call(link, lambda i: m.Join(i, inv.cloud_id, inv.secret, 10**12))
        links = [link] + [liar.connect(d) for d in peers[1:]]
        for lk in links:
            liar.notify(lk, m.Have(bytes.fromhex(oid), b"\xff" * ((total + 7) // 8)))
        wait_for(lambda: health(admin, oid)["health"] == "healthy", 60, "placement on real members")

        def liar_row(d: Daemon) -> Any:
            return next(h for h in health(d, oid)["holders"] if h["peer_id"] == str(liar.identity.peer_id))

        wait_for(lambda: liar_row(admin)["failed_audit"], 30, "the liar to fail an audit")
        row = liar_row(admin)
        assert row["percent"] == 100.0 and row["confirmed"] == []  # claimed everything, proved nothing
        assert health(admin, oid)["complete_copies"] == 2  # the two real copies, not three
        # A member may ask, but a holder never releases a copy the class still needs.
        for d in peers:
            if d.peer_id in holders_with_copy(admin, oid):
                lk = links[peers.index(d)]
                with pytest.raises(PeerError, match="class needs"):
                    liar.call(lk, lambda i: m.Release(i, bytes.fromhex(oid), (0,)))
        # A holder goes away: repair treats the liar's blocks as missing and copies to a real member.
        real = holders_with_copy(admin, oid)
        victim = next(d for d in peers if d.peer_id in real and d is not admin)
        assert victim.stop() == 0
        rest = [d for d in peers if d is not victim]
        watcher = rest[0]
        wait_for(lambda: len(holders_with_copy(watcher, oid)) == 2, 90, "repair onto a real member")
        assert str(liar.identity.peer_id) not in holders_with_copy(watcher, oid)
        out = tmp_path / "back.bin"
        rest[1].json("get", added["read_cap"], "-o", str(out))  # fetches fail over from the liar
        assert out.read_bytes() == src.read_bytes()
        assert liar.audited > 0
    finally:
        liar.close()


def test_pin_adds_a_copy_and_unpin_respects_the_class(daemons: Start, make_file: Callable[..., Path]) -> None:
    peers = make_cloud(daemons, 4)
    added = peers[1].json("add", str(make_file(2_000_000, name="p.bin")), "--class", "replica-2")
    oid = added["object_id"]
    wait_for(lambda: len(holders_with_copy(peers[0], oid)) == 2, 60, "two copies")
    holding = holders_with_copy(peers[0], oid)
    outsider_of_copy = next(d for d in peers if d.peer_id not in holding)
    outsider_of_copy.json("pin", added["verify_cap"])
    wait_for(lambda: health(peers[0], oid)["complete_copies"] == 3, 30, "the pin to count")
    pinned = next(h for h in health(peers[0], oid)["holders"] if h["peer_id"] == outsider_of_copy.peer_id)
    assert pinned["pinned"] is True
    # The pin is an extra: the cloud does not release a placed copy because of it.
    assert len([p for p in holders_with_copy(peers[0], oid) if p in holding]) == 2
    outsider_of_copy.json("unpin", oid)
    wait_for(lambda: health(peers[0], oid)["complete_copies"] == 2, 30, "the unpin to count")
    holder = next(d for d in peers if d.peer_id == holding[0])
    refused = holder.cli("unpin", oid, check=False)
    assert refused.returncode == 7 and "below" in refused.stderr
    assert health(peers[0], oid)["complete_copies"] == 2


def test_restarting_every_daemon_keeps_cloud_and_ledger(daemons: Start, make_file: Callable[..., Path]) -> None:
    peers = make_cloud(daemons, 3)
    peers[0].cli("class", "add", "pair", "--replicas", "2", "--max", "3", "--spread", "site")
    added = peers[1].json("add", str(make_file(2_000_000, name="k.bin")), "--class", "pair")
    oid = added["object_id"]
    wait_for(lambda: len(holders_with_copy(peers[2], oid)) == 3, 60, "growth to the max of 3")
    before = peers[2].json("cloud", "members")
    ports = {d.home.name: d.port for d in peers}
    for d in peers:
        assert d.stop() == 0
    again = [daemons(name, port) for name, port in ports.items()]
    for d in again:
        wait_for(lambda d=d: all_online(d, 3), 30, "members to reconnect")
    after = again[2].json("cloud", "members")
    assert after["version"] == before["version"] and after["classes"] == before["classes"]
    assert [x["peer_id"] for x in after["members"]] == [x["peer_id"] for x in before["members"]]
    status = health(again[2], oid)
    assert status["class"] == "pair" and len(status["holders"]) == 3  # the ledger survived the restart
    wait_for(lambda: health(again[2], oid)["health"] == "healthy", 30, "healthy again")


def test_a_lost_ec_column_is_rebuilt_from_the_other_shares(daemons: Start, make_file: Callable[..., Path]) -> None:
    peers = make_cloud(daemons, 4)
    peers[0].cli("class", "add", "fast-ec", "--ec", "2+1", "--grace", "1s")
    added = peers[1].json("add", str(make_file(3_000_000, name="ec.bin")), "--class", "fast-ec")
    oid = added["object_id"]
    watcher = peers[0]
    wait_for(lambda: settled(watcher, oid, 3), 60, "one share column per peer")
    s = health(watcher, oid)
    holding = {h["peer_id"] for h in s["holders"] if h["confirmed"] and not h["self"]}
    victim = next(d for d in peers[1:] if d.peer_id in holding)
    assert victim.stop() == 0
    # Nobody else has the victim's column: a new holder must decode and re-encode it.
    wait_for(lambda: health(watcher, oid)["health"] == "healthy", 90, "the lost column to be rebuilt")
    s = health(watcher, oid)
    assert s["redundancy"]["available"] == 3 and s["redundancy"]["crowded"] == 1


def test_class_add_says_when_the_cloud_cannot_meet_it(daemons: Start) -> None:
    admin = daemons("admin")
    admin.cli("cloud", "create", "solo", "--tag", "site=home")
    for args, why in (
        (("wide", "--replicas", "9"), "needs 9 members"),
        (("ec", "--ec", "2+1"), "needs 3 members"),
        (("apart", "--replicas", "1", "--spread", "rack"), "tag 'rack', which no member has"),
    ):
        refused = admin.cli("class", "add", *args, check=False)
        assert refused.returncode == 7 and why in refused.stderr and "--force" in refused.stderr, refused.stderr
    names = [c["name"] for c in admin.json("class", "ls")]
    assert "wide" not in names and "ec" not in names  # nothing defined by a refusal
    admin.cli("class", "add", "wide", "--replicas", "9", "--force")  # members will join later
    admin.cli("class", "add", "near", "--replicas", "1", "--spread", "site")  # met: accepted
    assert {"wide", "near"} <= {c["name"] for c in admin.json("class", "ls")}
    bare = admin.cli("class", "add", "slow", "--replicas", "1", "--grace", "5", check=False)
    assert bare.returncode == 2 and "give a unit" in bare.stderr


def test_objects_added_before_the_cloud_are_brought_or_said_to_stay(
    daemons: Start, make_file: Callable[..., Path]
) -> None:
    a = daemons("a")
    early = a.json("add", str(make_file(300_000, name="early.bin")), "--class", "replica-2")
    created = a.json("cloud", "create", "home", "--offer", "1GiB", "--bring")
    assert created["brought"] == [early["object_id"]] and created["local_only"] == 0
    b = daemons("b")
    mine = b.json("add", str(make_file(200_000, name="mine.bin")), "--class", "replica-2")
    joined = b.cli("cloud", "join", invite(a), "--offer", "1GiB")
    assert "1 object(s) added before stay on this node only" in joined.stdout and "cloud bring" in joined.stdout
    assert b.json("cloud", "bring")["local_only"] == 0
    # Both objects are the cloud's now: placement gives each its second copy on the other member.
    for d, oid in ((b, early["object_id"]), (a, mine["object_id"])):
        wait_for(lambda d=d, oid=oid: health(d, oid)["redundancy"]["available"] == 2, 30, "a second copy")


def test_local_percent_is_one_figure_everywhere(daemons: Start, make_file: Callable[..., Path], tmp_path: Path) -> None:
    a, b = make_cloud(daemons, 2)
    added = a.json("add", str(make_file(3 * 1024 * 1024 + 5, name="l.bin")), "--class", "replica-1")
    oid = str(added["object_id"])
    b.cli("get", added["read_cap"], "-o", str(tmp_path / "copy"))  # b keeps a cache, not a copy
    wait_for(lambda: health(b, oid)["redundancy"]["available"] == 1, 20, "b to learn who holds it")

    def figures(d: Daemon) -> set[float]:
        row = next(r for r in d.json("ls") if r["object_id"] == oid)
        listed = next(o for o in d.json("status")["objects"] if o["object_id"] == oid)
        return {
            row["local_percent"],
            d.json("info", oid)["local_percent"],
            health(d, oid)["local_percent"],
            listed["local_percent"],
        }

    # Each node shows one figure in all four places; the holder (placement may move the one copy
    # to b) shows 100 %, the other 0 %: a get's leftover blocks are a cache, not a copy.
    wait_for(lambda: sorted([*figures(a), *figures(b)]) == [0.0, 100.0], 30, "one figure per node")


def test_status_of_an_object_a_peer_holds_nothing_of(daemons: Start, make_file: Callable[..., Path]) -> None:
    a, _ = make_cloud(daemons, 2)
    added = a.json("add", str(make_file(2_500_000, name="far.bin")), "--class", "replica-2")
    outsider = daemons("outsider")  # in no cloud, linked to a only: it knows nothing of the object
    outsider.cli("peers", "add", f"{a.peer_id}@127.0.0.1:{a.port}")
    wait_for(lambda: any(r["connected"] for r in outsider.json("peers")), what="the outsider's link")
    seen = outsider.json("status", str(added["object_id"]))
    held = {h["peer_id"]: h["percent"] for h in seen["holders"]}
    assert held.get(a.peer_id) == 100.0 and seen["local_percent"] == 0.0
