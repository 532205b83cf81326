"""Signed catalog logs: a batch is its author's alone, checked whole, and no member can plant,
weaken or remove another owner's entry; convergent owners keep the strongest class."""

import os
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercloud.cloud import catalog
from peercloud.cloud.catalog import ERASE, NO_PREV, PUT, REMOVE, Batch, Op
from peercloud.cloud.classes import DEFAULT_CLASSES
from peercloud.cloud.document import Invite
from peercloud.errors import FormatError, RefusedError
from peercloud.identity import Identity, PeerId
from peercloud.net.link import PeerLink
from peercloud.store.catalogtables import LEGACY_OWNER
from peercloud.store.index import Index, OwnedEntry
from peercloud.wire import messages as m

from .daemons import Daemon, wait_for
from .test_cloud import Raw, invite, make_cloud

Start = Callable[..., Daemon]
CLOUD = os.urandom(16)


def put(oid: bytes, cls: str = "replica-3", size: int = 5000, at: float = 1000.0) -> Op:
    return Op(PUT, oid, at, cls, 1, 1, 1, size)


def test_a_batch_is_checked_whole_and_any_change_to_it_is_refused() -> None:
    me = Identity.generate()
    ops = [put(os.urandom(32)) for _ in range(catalog.MAX_OPS)]
    data = Batch.sign(me, CLOUD, 1, NO_PREV, 2000.0, ops).encode()
    assert len(data) < 60_000  # a full batch fits one page
    batch = Batch.decode(data)
    assert batch.ops == tuple(ops) and batch.author == me.peer_id
    batch.check(CLOUD, [me.peer_id], 0, NO_PREV, 0, time.time())
    for pos in (0, 20, 60, 80, 100, 150, 200, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        with pytest.raises(FormatError):
            Batch.decode(bytes(flipped))
    for bad in (data[:-1], data + b"\0", data[:100]):
        with pytest.raises(FormatError):
            Batch.decode(bad)
    # Another key cannot sign in my name: swap the author field for mine in a batch it signed.
    other = Identity.generate()
    forged = bytearray(Batch.sign(other, CLOUD, 1, NO_PREV, 2000.0, ops[:3]).encode())
    forged[17:49] = me.peer_id.public_key
    with pytest.raises(FormatError, match="forged"):
        Batch.decode(bytes(forged))


def test_a_batch_extends_only_a_members_own_log_in_order() -> None:
    me, outsider = Identity.generate(), Identity.generate()
    now = time.time()

    def check(batch: Batch, head: int = 0, prev: bytes = NO_PREV, logged: int = 0) -> None:
        Batch.decode(batch.encode()).check(CLOUD, [me.peer_id], head, prev, logged, now)

    def sign(who: Identity, seq: int, ops: list[Op], prev: bytes = NO_PREV) -> Batch:
        return Batch.sign(who, CLOUD, seq, prev, now, ops)

    one = sign(me, 1, [put(os.urandom(32))])
    with pytest.raises(RefusedError, match="another cloud"):
        Batch.decode(one.encode()).check(os.urandom(16), [me.peer_id], 0, NO_PREV, 0, now)
    with pytest.raises(RefusedError, match="not a member"):
        check(sign(outsider, 1, [put(os.urandom(32))]))
    first = catalog.digest(one.encode())
    with pytest.raises(RefusedError, match="does not follow"):
        check(one, head=1, prev=first)  # replayed
    with pytest.raises(RefusedError, match="does not follow"):
        check(sign(me, 3, [put(os.urandom(32))], first), head=1, prev=first)  # a gap
    check(sign(me, 2, [put(os.urandom(32))], first), head=1, prev=first)
    # Two different batches 1, and a batch 2 built on the one we do not hold: the author forked its log.
    other_one = catalog.digest(sign(me, 1, [put(os.urandom(32))]).encode())
    with pytest.raises(RefusedError, match="two different logs"):
        check(sign(me, 2, [put(os.urandom(32))], other_one), head=1, prev=first)
    with pytest.raises(RefusedError, match="full"):
        check(one, logged=catalog.MAX_LOG_OPS)
    with pytest.raises(RefusedError, match="future"):
        check(sign(me, 1, [put(os.urandom(32), at=now + 3600)]))
    with pytest.raises(RefusedError, match="impossible"):
        check(sign(me, 1, [Op(PUT, os.urandom(32), now, "replica-3", 3, 2, 1, 5000)]))
    # A delete is signed into a batch as it is made: one carried by a batch signed much later expired.
    with pytest.raises(RefusedError, match="expired"):
        check(sign(me, 1, [Op(REMOVE, os.urandom(32), now - 2 * catalog.DELETE_EXPIRY)]))
    with pytest.raises(RefusedError, match="removal"):
        check(sign(me, 1, [Op(REMOVE, os.urandom(32), now, "replica-3")]))
    with pytest.raises(FormatError):
        catalog.unpack_heads(b"\0" * 55, 10)
    with pytest.raises(FormatError):
        catalog.unpack_heads(os.urandom(32) + struct.pack(">Q", 0) + bytes(16), 10)
    assert catalog.peek(one.encode()) == (me.peer_id.public_key, 1)


def test_owners_keep_their_own_entries_and_the_strongest_class_counts(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    classes = DEFAULT_CLASSES
    a, b, liar = (os.urandom(32) for _ in range(3))
    oid = os.urandom(32)

    def entry(owner: bytes, op: Op) -> OwnedEntry:
        return catalog.owned(op, owner, classes)

    index.put_own([entry(a, put(oid, "replica-2"))])
    assert index.catalog(oid)[0].storage_class == "replica-2"
    index.append_batch(b, 1, b"x", [entry(b, put(oid, "replica-3", at=1001.0))])  # convergent: same object
    assert index.catalog(oid)[0].storage_class == "replica-3"
    index.append_batch(liar, 1, b"y", [entry(liar, put(oid, "replica-1", at=1.0))])  # weaker: no effect
    assert index.catalog(oid)[0].storage_class == "replica-3"
    assert index.catalog(oid)[0].added_at == 1.0  # (the earliest add among owners)
    index.append_batch(liar, 2, b"z", [entry(liar, Op(REMOVE, oid, 1002.0))])  # removes only its own
    assert index.catalog(oid)[0].storage_class == "replica-3"
    index.append_batch(b, 2, b"w", [entry(b, Op(REMOVE, oid, 1003.0))])
    assert index.catalog(oid)[0].storage_class == "replica-2"  # a's entry remains
    assert index.mark_bad(oid, [a]) is None and index.catalog(oid) == []  # its manifest belied a's shape
    assert index.drop_author(liar, set()) == set()  # (nothing of it was left to go)
    # A put whose class codes otherwise than its shape never counts (holders would keep nothing).
    odd = os.urandom(32)
    assert index.append_batch(liar, 1, b"v", [entry(liar, put(odd, "ec-4+2"))]) == set()
    assert index.catalog(odd) == []
    # A catalog row from before owners (schema 6, as the upgrade leaves it) stays unless an admin
    # erases it: a member that plants its own entry and removes it again changes nothing.
    old = os.urandom(32)
    with index.transaction() as db:
        db.execute("INSERT INTO catalog VALUES (?, 'replica-3', 1, 1, 1, 5000, 1.0)", (old,))
        db.execute(  # as the migrations to versions 7 and 10 make them
            """INSERT INTO catalog_entries (object_id, owner, author, kind, class, total_blocks, k, n, size, at, rank)
               SELECT object_id, ?, ?, 1, class, total_blocks, k, n, size, added_at, 1000000 FROM catalog""",
            (LEGACY_OWNER, LEGACY_OWNER),
        )
    index.append_batch(liar, 2, b"u", [entry(liar, put(old, "replica-1", at=2.0))])
    index.append_batch(liar, 3, b"s", [entry(liar, Op(REMOVE, old, 2.5))])
    assert index.catalog(old)[0].storage_class == "replica-3"
    assert index.append_batch(b, 3, b"t", [entry(b, Op(ERASE, old, 3.0))], erasures=[(old, 3.0)]) == {old}
    # The removal of an object's only owner takes it out of the catalog.
    index.put_own([entry(a, put(odd, "replica-3", at=5.0))])
    assert index.catalog(odd) != [] and index.put_own([entry(a, Op(REMOVE, odd, 6.0))]) == {odd}
    index.close()


def catalog_class(d: Daemon, oid: str) -> Any:
    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        row = db.execute("SELECT class FROM catalog WHERE object_id = ?", (bytes.fromhex(oid),)).fetchone()
        return row[0] if row else None
    finally:
        db.close()


def log_heads(d: Daemon) -> dict[bytes, int]:
    db = sqlite3.connect(d.home / "index.sqlite")
    try:
        return {bytes(a): s for a, s in db.execute("SELECT author, MAX(seq) FROM catalog_log GROUP BY author")}
    finally:
        db.close()


def test_a_hostile_member_cannot_plant_weaken_or_remove_anothers_entry(
    daemons: Start, make_file: Callable[..., Path]
) -> None:
    admin, owner = make_cloud(daemons, 2)
    oid = owner.json("add", str(make_file(200_000, name="mine.bin")), "--class", "replica-2")["object_id"]
    wait_for(lambda: catalog_class(admin, oid) == "replica-2", 20, "the entry to reach the admin")
    raw = Raw()
    try:
        link = raw.connect(admin)
        parsed = Invite.parse(invite(admin))
        raw.call(link, lambda i: m.Join(i, parsed.cloud_id, parsed.secret, 10**9))
        links = [link, raw.connect(owner)]
        cloud = parsed.cloud_id
        victim = bytes.fromhex(oid)
        owner_key = PeerId.parse(owner.peer_id).public_key

        def push(batch: Batch, to: list[PeerLink] = links) -> None:
            for lk in to:
                raw.notify(lk, m.CatalogBatch(batch.encode()))

        # Its own entry for the victim's object, weaker, then its removal: the owner's stays.
        weaker = Batch.sign(
            raw.identity, cloud, 1, NO_PREV, time.time(), [put(victim, "replica-1", size=200_000, at=1.0)]
        )
        push(weaker)
        wait_for(lambda: raw.identity.peer_id.public_key in log_heads(admin), 20, "the raw member's batch kept")
        push(weaker)  # replayed: ignored
        after = catalog.digest(weaker.encode())
        removal = Batch.sign(raw.identity, cloud, 2, after, time.time(), [Op(REMOVE, victim, time.time())])
        push(removal)
        wait_for(lambda: log_heads(owner).get(raw.identity.peer_id.public_key) == 2, 20, "both its batches")
        for d in (admin, owner):
            assert catalog_class(d, oid) == "replica-2"
        # A batch in the owner's name, signed by another key: refused, and the link that carried it closes.
        forged = bytearray(Batch.sign(raw.identity, cloud, 2, after, time.time(), [Op(REMOVE, victim, 1.0)]).encode())
        forged[17:49] = owner_key
        raw.notify(links[0], m.CatalogBatch(bytes(forged)))
        wait_for(lambda: links[0].closed.done(), 10, "the forger's link to close")
        assert log_heads(admin)[owner_key] == 1 and catalog_class(admin, oid) == "replica-2"
    finally:
        raw.close()
    # A member that joins later learns both logs by pulling them and derives the same catalog.
    late = daemons("late")
    late.cli("cloud", "join", invite(admin))
    wait_for(lambda: log_heads(late) == log_heads(admin), 30, "the newcomer to pull every log")
    assert catalog_class(late, oid) == "replica-2"
