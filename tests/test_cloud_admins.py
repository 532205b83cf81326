"""Admins and the document's chain with real daemons: promotion and demotion, an admin leaving,
a removed admin's fork losing on every node (also from before its removal), a member's fake chain
bounded and holding up no one, offers capped at what the admin approved, no version for a re-join
that changes nothing."""

import os
import time
from dataclasses import replace

from peercloud.cloud.document import MEMBER, Invite, Member, SignedDoc
from peercloud.identity import Identity
from peercloud.net.link import PeerLink
from peercloud.wire import messages as m

from .daemons import Daemon, wait_for
from .test_cloud import Raw, Start, admin_doc_hex, all_online, invite, make_cloud


def roles(d: Daemon) -> dict[str, str]:
    return {x["peer_id"]: x["role"] for x in d.json("cloud", "members")["members"]}


def test_promote_demote_and_an_admin_leaving(daemons: Start) -> None:
    a, b, c = make_cloud(daemons, 3)
    refused = b.cli("cloud", "promote", c.peer_id, check=False)
    assert refused.returncode == 7 and "only an admin" in refused.stderr
    a.cli("cloud", "promote", b.peer_id[:13])  # short IDs as tables show them
    wait_for(lambda: roles(c)[b.peer_id] == "admin", what="c to learn b is an admin")
    b.cli("cloud", "invite")  # b may invite now
    # The founder leaves: a version signed by an admin of its parent, so every member takes it.
    a.cli("cloud", "leave")
    for d in (b, c):
        wait_for(lambda d=d: a.peer_id not in roles(d), what="the founder's departure to reach everyone")
    assert roles(b) == {b.peer_id: "admin", c.peer_id: "member"}
    last = b.cli("cloud", "demote", b.peer_id, check=False)
    assert last.returncode == 7 and "no admin left" in last.stderr  # the cloud keeps an admin


def test_a_removed_admins_fork_loses_on_every_node(daemons: Start) -> None:
    a, b, c = make_cloud(daemons, 3)
    a.cli("cloud", "promote", b.peer_id)
    wait_for(lambda: all(roles(d).get(b.peer_id) == "admin" for d in (b, c)), what="b's promotion everywhere")
    base = SignedDoc.decode(bytes.fromhex(admin_doc_hex(c)))
    ports = {d.peer_id: d.port for d in (a, b, c)}
    b_key = Identity.load(b.home / "node.key")
    assert b.stop() == 0 and c.stop() == 0
    a.cli("cloud", "remove", b.peer_id)  # a's branch: b is out
    assert a.stop() == 0
    # Meanwhile b, cut off from a, signs a version of its own on the same parent, and c, cut off
    # from a too, receives it first: a valid child, so c takes it.
    c = daemons("p2", port=ports[c.peer_id])
    rogue_member = Identity.generate().peer_id
    rogue = SignedDoc.create(base.doc.with_member(Member(rogue_member, MEMBER, 1)), b_key)
    raw = Raw(b_key)
    try:
        link = raw.connect(c)
        raw.notify(link, m.CloudDoc(rogue.encode()))
        wait_for(lambda: str(rogue_member) in {x["peer_id"] for x in c.json("cloud", "members")["members"]})
    finally:
        raw.close()
    # a comes back: both nodes see the fork, and a's removal of b wins on both.
    a = daemons("p0", port=ports[a.peer_id])
    for d in (a, c):
        wait_for(lambda d=d: set(roles(d)) == {a.peer_id, c.peer_id}, 30, f"{d.home.name} to settle on a's branch")
    assert a.json("cloud", "members")["version"] == c.json("cloud", "members")["version"] == base.doc.seq + 1
    assert "wins over ours" in (c.home / "daemon.log").read_text()


def test_a_removed_admins_fork_from_before_its_removal_loses(daemons: Start) -> None:
    a, b, c = make_cloud(daemons, 3)
    a.cli("cloud", "promote", b.peer_id)
    wait_for(lambda: all(roles(d).get(b.peer_id) == "admin" for d in (b, c)), what="b's promotion everywhere")
    base = SignedDoc.decode(bytes.fromhex(admin_doc_hex(c)))
    ports = {d.peer_id: d.port for d in (a, b, c)}
    b_key = Identity.load(b.home / "node.key")
    assert b.stop() == 0 and c.stop() == 0
    # a's branch: an unrelated change, then b is out. b's fork starts before both (where b was
    # still an admin) and demotes a, which a's first version alone could not answer.
    a.cli("class", "add", "one", "--replicas", "1")
    a.cli("cloud", "remove", b.peer_id)
    assert a.stop() == 0
    c = daemons("p2", port=ports[c.peer_id])
    rogue = SignedDoc.create(base.doc.with_role(Identity.load(a.home / "node.key").peer_id, MEMBER), b_key)
    raw = Raw(b_key)
    try:
        link = raw.connect(c)
        raw.notify(link, m.CloudDoc(rogue.encode()))
        wait_for(lambda: roles(c).get(a.peer_id) == "member", what="c to take b's fork")
    finally:
        raw.close()
    a = daemons("p0", port=ports[a.peer_id])
    for d in (a, c):
        wait_for(lambda d=d: roles(d) == {a.peer_id: "admin", c.peer_id: "member"}, 30, f"{d.home.name} on a's branch")
    assert a.json("cloud", "members")["version"] == c.json("cloud", "members")["version"] == base.doc.seq + 2
    assert "wins over ours" in (c.home / "daemon.log").read_text()


def test_a_members_fake_chain_is_bounded_and_holds_up_no_one(daemons: Start) -> None:
    a, b, c = make_cloud(daemons, 3)
    head = SignedDoc.decode(bytes.fromhex(admin_doc_hex(c)))
    ports = {d.peer_id: d.port for d in (a, c)}
    b_key = Identity.load(b.home / "node.key")
    assert b.stop() == 0 and c.stop() == 0
    a.cli("class", "add", "one", "--replicas", "1")
    a.cli("class", "add", "two", "--replicas", "2")  # c will be two versions behind
    assert a.stop() == 0
    # b, a mere member, makes up a long chain of big versions that never meets c's, and hands
    # them out slowly: c must give up at its byte budget, and reconcile with a meanwhile.
    fat = [
        Member(Identity.generate().peer_id, MEMBER, 1, tuple((f"k{i}", "x" * 3300) for i in range(8))) for _ in (0, 1)
    ]
    fakes: dict[int, bytes] = {}
    prev = os.urandom(32)
    for seq in range(head.doc.seq + 1, head.doc.seq + 400):
        doc = replace(head.doc, seq=seq, prev=prev, members=(*head.doc.members, *fat))
        version = SignedDoc.create(doc, b_key)
        fakes[seq], prev = version.encode(), version.digest
    served: list[int] = []
    raw = Raw(b_key)

    def answer(lk: PeerLink, msg: m.Message) -> None:
        if isinstance(msg, m.CloudDocWant) and msg.seq in fakes:
            time.sleep(0.05)  # slowly (this blocks only the hand-driven peer's own loop)
            served.append(msg.seq)
            lk.respond(msg.id, m.Ok(msg.id, fakes[msg.seq]))

    raw.answer = answer
    c = daemons("p2", port=ports[c.peer_id])
    try:
        link = raw.connect(c)
        raw.notify(link, m.CloudDoc(fakes[max(fakes)]))
        wait_for(lambda: len(served) >= 5, what="c to fetch b's fake chain")
        a = daemons("p0", port=ports[a.peer_id])
        wait_for(lambda: c.json("cloud", "members")["version"] == head.doc.seq + 2, what="c to catch up with a")
        assert len(served) < 150  # while b's chain was still being fetched
        log = c.home / "daemon.log"
        wait_for(lambda: "exceed 8388608 bytes" in log.read_text(), 60, "c to give up on b's chain")
        assert len(served) < 170  # 8 MiB of 53 KB versions, not the 399 on offer
    finally:
        raw.close()
    assert {"one", "two"} <= {x["name"] for x in c.json("class", "ls")}


def test_a_member_cannot_raise_its_offer_by_joining_again(daemons: Start) -> None:
    a = daemons("a")
    a.cli("cloud", "create", "lab", "--offer", "1GiB")
    b = daemons("b")
    token = invite(a)
    b.cli("cloud", "join", token, "--offer", "100MiB")
    wait_for(lambda: all_online(a, 2), what="b online")
    secret, cloud = Invite.parse(token).secret, Invite.parse(token).cloud_id
    raw = Raw(Identity.load(b.home / "node.key"))
    try:
        link = raw.connect(a)
        raw.call(link, lambda i: m.Join(i, cloud, secret, 10 * 2**40))  # the same invite, 10 TiB
        raw.call(link, lambda i: m.Join(i, cloud, secret, 50 * 2**20))  # less is fine
        version = a.json("cloud", "members")["version"]
        raw.call(link, lambda i: m.Join(i, cloud, secret, 50 * 2**20))  # again: nothing changes
        assert a.json("cloud", "members")["version"] == version  # so no new version
    finally:
        raw.close()
    offers = {x["peer_id"]: x["offer"] for x in a.json("cloud", "members")["members"]}
    assert offers[b.peer_id] == 50 * 2**20
