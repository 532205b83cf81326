"""Admins and the document's chain with real daemons: promotion and demotion, an admin leaving,
a removed admin's fork losing on every node, offers capped at what the admin approved."""

from peercloud.cloud.document import MEMBER, Invite, Member, SignedDoc
from peercloud.identity import Identity
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
    finally:
        raw.close()
    offers = {x["peer_id"]: x["offer"] for x in a.json("cloud", "members")["members"]}
    assert offers[b.peer_id] == 50 * 2**20
