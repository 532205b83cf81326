"""Attack: hostile peers against bucket heads and bucket logs (`names/log.py`, `node/bucketsync.py`).

Real daemons on loopback and `Mallory`: a `Raw` peer with its own identity that joined the cloud
with an invite (offering 1 byte, so nothing is placed on it) and sends heads by hand.

- Forged heads (a bad writer signature, a cert by a key other than the bucket's signer, altered
  bytes, a head in another member's name), replays (older heads of mallory and of the owner),
  an outsider's valid head, and a read-cap holder certifying itself. Bound: forged heads close
  the link that carried them and nothing is kept; replays and outsiders are dropped quietly;
  members keep a self-certified head (they cannot tell) and readers never merge its batch.
- A flood of heads from a member: the most heads a message may carry, then more buckets than
  a writer may keep, then ever newer heads of one log. Bound: at most MAX_LOGS_PER_WRITER logs
  kept, the index grows by a few MiB, under 100 ms of CPU per message, a third peer answered;
  a member joining afterwards stays linked; the heads leave with their member when removed.
- Malicious batches from a member holding the write cap: garbage, mislabelled (bucket, epoch,
  writer, seq), a forked log, keys like '../x', control characters, an absolute or 1025-byte key,
  no entries, over 4 MiB, a "loop", a wrong object key, a msgpack bomb, an empty `prev` at batch
  N > 1. Bound: each is refused whole (nothing of it listed), the reader keeps reading the
  honest writer, stays under +64 MiB, answers a third peer, and no member link drops.
- What that writer can destroy: an object the reader owns but never put in a bucket, and a key
  the owner writes again after the writer's removal. Bound: neither.

Batch objects are ordinary cloud objects: the test stores the crafted bytes through a daemon's
API (any member can add any bytes; who added them does not matter to a reader). Figures are
printed on one line per test (run with -s).
"""

import asyncio
import dataclasses
import os
import sqlite3
import struct
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack

from peercloud.cli.client import DaemonClient
from peercloud.cloud.document import Invite
from peercloud.content import caps as ocaps
from peercloud.content.caps import ReadCap
from peercloud.identity import Identity, PeerId
from peercloud.names import log as nlog
from peercloud.names.caps import BucketCap, public_of
from peercloud.net.link import PeerLink
from peercloud.node.bucketsync import MAX_LOGS_PER_WRITER
from peercloud.node.home import NodeHome
from peercloud.wire import messages as m

from ..daemons import Daemon
from ..test_cloud import Raw, invite, make_cloud
from .hostile import (
    Findings,
    MiB,
    RssSampler,
    Watcher,
    closed_reason,
    cpu_seconds,
    index_bytes,
    mib,
    poll,
    wait_quiet,
)

Start = Callable[..., Daemon]
# A head: fixed part (version, bucket, epoch, signer, writer, seq, time, batch ID), the batch key
# sealed under the read key (60 bytes), the signer's cert of the writer, the writer's signature.
FIXED = struct.Struct(">B16sI32s32sQd32s")
assert FIXED.size + 60 + 64 + 64 == nlog.HEAD_SIZE
SIGNER = slice(21, 53)
WRITER = slice(53, 85)
BATCH_ID = slice(101, 133)
CERT = slice(FIXED.size + 60, FIXED.size + 124)
SIG = slice(FIXED.size + 124, None)
END_OF_TIME = (1 << 63) - 1  # the greatest hybrid clock an entry may carry
WIRE_HEADS = 64  # heads a bucket_heads message can carry through `decode_header` (max_array_len)


# -- a daemon seen from outside


def rows(d: Daemon, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    db = sqlite3.connect(d.home / "index.sqlite", timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def heads_of(d: Daemon, writer: bytes) -> dict[tuple[bytes, int], int]:
    """(bucket, epoch) -> seq of every head a daemon keeps for one writer."""
    got = rows(d, "SELECT bucket_id, epoch, seq FROM bucket_heads WHERE writer = ?", (writer,))
    return {(bytes(b), int(e)): int(s) for b, e, s in got}


def live(d: Daemon, bucket: bytes) -> dict[str, bytes]:
    """key -> object ID of a bucket as a daemon lists it."""
    got = rows(d, "SELECT key, object_id FROM bucket_keys WHERE bucket_id = ? AND removed = 0", (bucket,))
    return {str(k): bytes(o) for k, o in got}


def every_key(d: Daemon, bucket: bytes) -> set[str]:
    """Every key a daemon keeps for a bucket, tombstones included."""
    return {str(r[0]) for r in rows(d, "SELECT key FROM bucket_keys WHERE bucket_id = ?", (bucket,))}


def read_to(d: Daemon, bucket: bytes, writer: bytes) -> int:
    """How far a daemon has read a writer's log (0: not at all)."""
    got = rows(d, "SELECT MAX(seq) FROM bucket_logs WHERE bucket_id = ? AND writer = ?", (bucket, writer))
    return int(got[0][0] or 0)


def in_catalog(d: Daemon, object_id: bytes) -> bool:
    return bool(rows(d, "SELECT 1 FROM catalog WHERE object_id = ?", (object_id,)))


def log_text(d: Daemon) -> str:
    return (d.home / "daemon.log").read_text(errors="replace")


def refusals(d: Daemon, writer: bytes) -> int:
    """How many times a daemon gave up reading a writer's log."""
    return log_text(d).count(f"log of {writer.hex()[:12]} not read")


def store(d: Daemon, data: bytes, name: str) -> ReadCap:
    """Crafted bytes as an ordinary cloud object, added by a daemon (through its API)."""
    path = d.home.parent / "crafted" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    client = DaemonClient.find(NodeHome(d.home))
    assert client is not None
    added = client.stream("/v1/objects", {"path": str(path), "storage_class": None, "convergent": False}, None)
    cap = ocaps.parse(added["read_cap"])
    assert isinstance(cap, ReadCap)
    return cap


# -- batches and heads made by hand


def entry(key: str, writer: bytes, hlc: int | None = None, removed: bool = False, oid: bytes = b"") -> list[Any]:
    """A packed entry; no rule is checked (that is the reader's job)."""
    hlc = hlc if hlc is not None else int(time.time() * 1000) << 16
    if removed:
        return nlog.Entry(key, hlc, writer, True).pack()
    return nlog.Entry(key, hlc, writer, False, oid or os.urandom(32), os.urandom(32), 10, time.time()).pack()


def batch(cap: BucketCap, writer: bytes, seq: int, prev: bytes, ops: list[list[Any]], **over: Any) -> bytes:
    """A batch's plaintext; `over` replaces any field of its map (b, e, w, s, p, o, v)."""
    body: dict[str, Any] = {"v": nlog.VERSION, "b": cap.bucket_id, "e": cap.epoch, "w": writer, "s": seq}
    body.update({"p": prev, "o": ops})
    body.update(over)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def ref(cap: ReadCap) -> bytes:
    """A batch's `prev`: the read cap (object ID and key) of the one before it."""
    return cap.object_id + cap.key


def head(who: Identity, cap: BucketCap, seq: int, target: ReadCap) -> bytes:
    """A well-signed head of `who`'s log, certified by `cap`'s signing key."""
    cert = nlog.certify(cap, who.peer_id.public_key)
    return nlog.Head.sign(who, cap, cert, seq, target.object_id, target.key).encode()


def resign(who: Identity, data: bytes) -> bytes:
    """A head altered by hand, signed again by `who` over the altered bytes."""
    body = data[: SIG.start]
    return body + who.sign(b"peercloud bucket head v1\x00" + body)


class Mallory:
    """A member of the cloud driven by hand: joins with an invite, links to the daemons given,
    and sends them whatever heads it likes."""

    def __init__(self, admin: Daemon, others: list[Daemon]) -> None:
        self.raw = Raw()
        self.raw.answer = self._answer
        self.identity = self.raw.identity
        self.key = self.identity.peer_id.public_key
        self.links: dict[str, PeerLink] = {}
        first = self.link(admin)
        inv = Invite.parse(invite(admin))
        self.raw.call(first, lambda i: m.Join(i, inv.cloud_id, inv.secret, 1))  # 1 byte: nothing placed here
        for d in [admin, *others]:
            poll(partial(self.known_to, d), 30, f"{d.home.name} to know mallory", every=0.2)

    def known_to(self, d: Daemon) -> bool:
        """Whether a daemon lists mallory among the cloud's members."""
        return str(self.identity.peer_id) in [x["peer_id"] for x in d.json("cloud", "members")["members"]]

    @staticmethod
    def _answer(lk: PeerLink, msg: m.Message) -> None:
        if isinstance(msg, m.Request) and not isinstance(msg, m.Ping):
            lk.respond(msg.id, m.Error(msg.id, "not_found", "mallory holds nothing"))

    def link(self, d: Daemon) -> PeerLink:
        """The open link to a daemon (dialled again if it closed one)."""
        lk = self.links.get(d.peer_id)
        if lk is None or lk.closed.done():
            lk = self.links[d.peer_id] = self.raw.connect(d)
        return lk

    def send(self, d: Daemon, heads: list[bytes], per: int = 0) -> PeerLink:
        """Heads to a daemon, `per` a message (WIRE_HEADS by default); the link used."""
        lk = self.link(d)
        per = per or WIRE_HEADS
        for i in range(0, len(heads), per):
            self.raw.notify(lk, m.BucketHeads(tuple(heads[i : i + per])))
        return lk

    def closed(self, lk: PeerLink, timeout: float = 10.0) -> bool:
        """Wait for a daemon to close a link; False if it is still open after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if lk.closed.done():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Hang up and stop."""
        hang_up(self.raw, list(self.links.values()))
        self.raw.close()


def hang_up(raw: Raw, links: list[PeerLink]) -> None:
    """Close a hand-driven peer's links (a stopped loop would leave them open, and silent)."""

    async def close() -> None:
        for lk in links:
            lk.close("done")
        await asyncio.sleep(0.1)

    raw.run(close())


def bucket_with_reader(daemons: Start) -> tuple[Daemon, Daemon, BucketCap, bytes]:
    """A two-member cloud: the owner writes bucket `b` (one key, 'keep.txt'), the other member
    reads it. (owner, reader, write cap, bucket ID)."""
    owner, reader = make_cloud(daemons, 2)
    owner.cli("bucket", "create", "b")
    src = owner.home.parent / "keep.txt"
    src.write_bytes(b"keep me\n" * 100)
    owner.cli("put", str(src), "b/keep.txt")
    cap = BucketCap.parse(owner.json("bucket", "share", "b", "--write")["cap"])
    reader.json("bucket", "import", str(cap.reader()), "--as", "b")
    assert set(live(reader, cap.bucket_id)) == {"keep.txt"}
    return owner, reader, cap, cap.bucket_id


def last_refusal(d: Daemon, writer: bytes) -> str:
    """The reason of the last refusal of a writer's log in a daemon's log."""
    lines = [x for x in log_text(d).splitlines() if f"log of {writer.hex()[:12]} not read" in x]
    return lines[-1].split(" not read: ", 1)[1] if lines else ""


def short_ids(d: Daemon) -> int:
    """Links a daemon dropped over a block request with a short ID (either side of it)."""
    return log_text(d).count("block IDs are 32 bytes")


def test_forged_replayed_and_outsider_heads_are_refused(daemons: Start) -> None:
    f = Findings("bucket-heads")
    owner, reader, cap, bid = bucket_with_reader(daemons)
    owner_key = PeerId.parse(owner.peer_id).public_key
    first = rows(owner, "SELECT head FROM bucket_heads WHERE writer = ?", (owner_key,))[0][0]

    # An outsider with a perfectly valid head (certified by the bucket's own key): ignored.
    stranger = Raw()
    try:
        lk = stranger.connect(reader)
        obj = ReadCap(os.urandom(32), os.urandom(32))
        stranger.notify(lk, m.BucketHeads((head(stranger.identity, cap, 1, obj),)))
        time.sleep(0.5)
        f.require(not heads_of(reader, stranger.identity.peer_id.public_key), "a non-member's head was kept")
        f.require(not lk.closed.done(), "an outsider's head closed its link (it is ignored, not refused)")
        hang_up(stranger, [lk])
    finally:
        stranger.close()

    mallory = Mallory(owner, [reader])
    w = mallory.key
    try:
        # Mallory holds the read cap only: it certifies itself with a signing key of its own.
        # Members keep such heads (they cannot know the bucket's signer); readers must ignore them.
        mine = dataclasses.replace(cap, signer=public_of(seed := os.urandom(32)), sign_seed=seed)
        obj = ReadCap(os.urandom(32), os.urandom(32))
        valid = head(mallory.identity, mine, 7, obj)
        by_other = bytearray(valid)  # certified by mallory's key...
        by_other[SIGNER] = cap.signer  # ...claiming the bucket's signer
        flipped_sig = bytearray(valid)
        flipped_sig[-1] ^= 1
        flipped_batch = bytearray(valid)
        flipped_batch[BATCH_ID.start] ^= 1
        as_owner = bytearray(head(mallory.identity, cap, 1000, obj))
        as_owner[WRITER] = owner_key  # the owner's name, certified for it, signed by mallory
        as_owner[CERT] = nlog.certify(cap, owner_key)
        forged = {
            "bad_writer_signature": (bytes(flipped_sig), "forged or altered"),
            "cert_by_another_key": (resign(mallory.identity, bytes(by_other)), "not certified"),
            "altered_batch_id": (bytes(flipped_batch), "forged or altered"),
            "in_the_owners_name": (resign(mallory.identity, bytes(as_owner)), "forged or altered"),
        }

        def head_refusals() -> int:
            return log_text(reader).count("bucket head refused")

        for what, (data, expect) in forged.items():
            n = head_refusals()
            lk = mallory.send(reader, [data])
            f.require(mallory.closed(lk), f"{what}: the link that carried a forged head stayed open")
            poll(lambda: head_refusals() > n, 10, f"{what} to be refused", every=0.05)  # noqa: B023
            why = closed_reason(reader, str(mallory.identity.peer_id)) or ""
            f.figure(what, why.removeprefix("bucket head refused: "))
            f.require(expect in why, f"{what}: closed for another reason: {why!r}")
        f.require(not heads_of(reader, w), "a forged head was kept")
        f.require(heads_of(reader, owner_key)[bid, cap.epoch] == 1, "a head in the owner's name replaced its own")

        # Replays: mallory's own older head, and the owner's first head once it wrote a second.
        mallory.send(reader, [valid])
        poll(lambda: heads_of(reader, w) == {(bid, cap.epoch): 7}, 10, "mallory's head kept", every=0.1)
        mallory.send(reader, [head(mallory.identity, mine, 3, obj), valid])
        src = owner.home.parent / "second.txt"
        src.write_bytes(b"second")
        owner.cli("put", str(src), "b/second.txt")
        poll(lambda: heads_of(reader, owner_key)[bid, cap.epoch] == 2, 20, "the owner's second head", every=0.1)
        lk = mallory.send(reader, [bytes(first)])
        time.sleep(0.5)
        f.require(heads_of(reader, w)[bid, cap.epoch] == 7, "an older head of mallory replaced a newer one")
        f.require(heads_of(reader, owner_key)[bid, cap.epoch] == 2, "the owner's first head, replayed, was kept")
        f.require(not lk.closed.done(), "a replay closed the link (replays are only dropped)")

        # The self-certified head names a real batch this time (sealed under the real read key).
        planted = store(owner, batch(cap, w, 8, b"", [entry("planted", w)]), "planted")
        for d in (owner, reader):
            mallory.send(d, [head(mallory.identity, mine, 8, planted)])
        poll(lambda: heads_of(reader, w).get((bid, cap.epoch)) == 8, 10, "the self-certified head kept")
        src.write_bytes(b"third")
        owner.cli("put", str(src), "b/third.txt")
        poll(lambda: "third.txt" in live(reader, bid), 20, "the reader to read the owner's third key", every=0.1)
        f.require("planted" not in every_key(reader, bid), "a read-cap holder's self-certified batch was merged")
        f.require("planted" not in every_key(owner, bid), "the owner merged a self-certified batch")

    finally:
        mallory.close()
    f.check()


def test_a_head_flood_stays_bounded_and_leaves_with_its_member(daemons: Start) -> None:
    f = Findings("bucket-head-flood")
    owner, other = make_cloud(daemons, 2)
    mallory = Mallory(owner, [other])
    w = mallory.key
    try:
        # Heads of made-up buckets, certified by mallory's own key (members cannot tell), each
        # costing mallory two signatures, and nothing for the bucket's storage.
        mine = BucketCap.new("replica-3")
        obj = ReadCap(os.urandom(32), os.urandom(32))
        mallory.send(other, [head(mallory.identity, mine, 1, obj)])
        # The most heads a bucket_heads message may carry (MAX_BUCKET_HEADS), all well signed:
        # a member takes them in, or at worst drops the message; the link should not close.
        pid = owner.proc.pid
        before_index = index_bytes(owner.home)
        made = time.monotonic()
        fake = [
            head(mallory.identity, dataclasses.replace(mine, bucket_id=os.urandom(16)), 1, obj)
            for _ in range(MAX_LOGS_PER_WRITER + 2 * m.MAX_BUCKET_HEADS)
        ]
        f.figure("flood_made_s", round(time.monotonic() - made, 1))
        lk = mallory.send(owner, fake[: m.MAX_BUCKET_HEADS], per=m.MAX_BUCKET_HEADS)
        full_closes = mallory.closed(lk, 3.0)
        why = (closed_reason(owner, str(mallory.identity.peer_id)) or "") if full_closes else "stayed open"
        f.figure("full_message", why)
        f.require(not full_closes, f"a bucket_heads of {m.MAX_BUCKET_HEADS} well-signed heads closed the link")

        # Flood in messages the decoder takes: more buckets than a writer may keep, then newer
        # and newer heads of one log (each one checked and kept in turn).
        messages = -(-len(fake) // WIRE_HEADS)
        with Watcher(owner, interval=0.05) as watcher:
            cpu = cpu_seconds(pid)
            mallory.send(owner, fake)
            poll(lambda: len(heads_of(owner, w)) >= MAX_LOGS_PER_WRITER, 60, "the flood to be taken in", every=0.2)
            wait_quiet(pid)
            spent = cpu_seconds(pid) - cpu
            f.figure("flood_messages", messages)
            f.figure("flood_cpu_per_message_ms", round(1000 * spent / messages))
            f.require(spent / messages < 0.1, f"{1000 * spent / messages:.0f} ms of CPU per bucket_heads message")
            kept = len(heads_of(owner, w))
            f.figure("flood_kept", kept)
            f.require(kept <= MAX_LOGS_PER_WRITER, f"{kept} logs of one writer kept")
            grown = index_bytes(owner.home) - before_index
            f.figure("flood_index_growth", mib(grown))
            f.require(grown < 8 * MiB, f"the index grew by {mib(grown)}")
            one = dataclasses.replace(mine, bucket_id=fake[0][1:17])
            bumps = [head(mallory.identity, one, s, obj) for s in range(2, 2 + 10 * WIRE_HEADS)]
            cpu = cpu_seconds(pid)
            mallory.send(owner, bumps)
            poll(lambda: heads_of(owner, w).get((one.bucket_id, one.epoch)) == len(bumps) + 1, 60, "the bumps")
            wait_quiet(pid)
            f.figure("bump_cpu_per_message_ms", round(1000 * (cpu_seconds(pid) - cpu) / 10))
        f.figure("flood_watcher", str(watcher.report))
        f.extend(watcher.problems())

        # A member joining now is sent every head the owner keeps, MAX_BUCKET_HEADS a message.
        late = daemons("late")
        late.cli("cloud", "join", invite(owner), "--offer", "1GiB")
        time.sleep(4.0)
        flaps = log_text(late).count("header is not valid msgpack")
        members = late.json("cloud", "members")["members"]
        online = len(members) == 4 and all(  # mallory publishes no address: the daemons' links count
            x["online"] for x in members if x["peer_id"] != str(mallory.identity.peer_id)
        )
        f.figure("late_member_link_drops", flaps)
        f.figure("late_member_sees_all_online", online)
        f.require(flaps == 0 and online, f"a member that joined after the flood cannot stay linked ({flaps} drops)")

        # The admin removes mallory: the heads it made should go with it (its logs can no longer
        # be extended; kept, they are sent to every member on every link, for ever).
        owner.cli("cloud", "remove", str(mallory.identity.peer_id))
        poll(lambda: not mallory.known_to(other), 20, "the other member to learn of the removal", every=0.2)
        deadline = time.monotonic() + 3
        while any(heads_of(d, w) for d in (owner, other)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {d.home.name: len(heads_of(d, w)) for d in (owner, other)}
        f.figure("heads_left_after_removal", left)
        f.require(not any(left.values()), f"a removed member's heads are kept: {left}")
    finally:
        mallory.close()
    f.check()


def test_a_writer_cannot_crash_a_reader_or_plant_garbage(daemons: Start) -> None:
    f = Findings("bucket-batches")
    start = time.monotonic()
    owner, reader, cap, bid = bucket_with_reader(daemons)
    mallory = Mallory(owner, [reader])
    w = mallory.key
    f.figure("setup_s", round(time.monotonic() - start, 1))
    try:
        log: list[ReadCap] = []  # mallory's well-formed log, oldest first
        seq = 0

        def send(target: ReadCap, to: tuple[Daemon, ...] = (reader,)) -> None:
            """Mallory's next head, naming `target`, to the daemons given."""
            nonlocal seq
            seq += 1
            for d in to:
                mallory.send(d, [head(mallory.identity, cap, seq, target)])

        def append(ops: list[list[Any]], name: str, to: tuple[Daemon, ...] = (reader,)) -> None:
            """The next batch of mallory's well-formed log, then its head."""
            log.append(store(owner, batch(cap, w, seq + 1, ref(log[-1]) if log else b"", ops), name))
            send(log[-1], to)
            poll(lambda: read_to(reader, bid, w) == seq, 30, f"the reader to read {name}", every=0.1)

        def refused(what: str, expect: str, n: int) -> None:
            poll(lambda: refusals(reader, w) > n, 30, f"the reader to refuse {what}", every=0.1)
            why = last_refusal(reader, w)
            f.figure(what, why[:60])
            f.require(expect in why, f"{what}: refused for another reason: {why!r}")

        append([entry("mallory-ok", w)], "ok")

        # Batches the reader must refuse whole, mallory's log staying where it was read to.
        good = ref(log[-1])
        fork = store(owner, batch(cap, w, seq, b"", [entry("fork-1", w)]), "fork")
        owner_key = PeerId.parse(owner.peer_id).public_key
        cases: list[tuple[str, Callable[[int], bytes], str]] = [
            ("forked", lambda s: batch(cap, w, s, ref(fork), [entry("fork-2", w)]), "forked log"),
            ("garbage", lambda s: os.urandom(3000), "does not decode"),
            ("not_a_map", lambda s: bytes(msgpack.packb([1, 2, s])), "unknown version"),
            ("other_bucket", lambda s: batch(cap, w, s, good, [entry("bad-b", w)], b=os.urandom(16)), "not what"),
            ("other_writer", lambda s: batch(cap, w, s, good, [entry("bad-w", w)], w=owner_key), "not what"),
            ("other_epoch", lambda s: batch(cap, w, s, good, [entry("bad-e", w)], e=cap.epoch + 1), "not what"),
            ("other_seq", lambda s: batch(cap, w, s + 5, good, [entry("bad-s", w)]), "not what"),
            ("dotdot_key", lambda s: batch(cap, w, s, good, [entry("fine", w), entry("../x", w)]), "impossible"),
            ("control_key", lambda s: batch(cap, w, s, good, [entry("a\x1bb", w)]), "impossible"),
            ("slash_key", lambda s: batch(cap, w, s, good, [entry("/etc/passwd", w)]), "impossible"),
            ("long_key", lambda s: batch(cap, w, s, good, [entry("k" * 1025, w)]), "impossible"),
            ("no_entries", lambda s: batch(cap, w, s, good, []), "malformed header"),
            ("huge", lambda s: os.urandom(nlog.MAX_BATCH_BYTES + 1), "larger than"),
        ]
        for what, make, expect in cases:
            n = refusals(reader, w)
            send(store(owner, make(seq + 1), what))
            refused(what, expect, n)
        # A loop, as near as content addressing allows: the tip's `prev` names another batch that
        # claims the tip's own seq (followed blindly, the walk would never end).
        sibling = store(owner, batch(cap, w, seq + 1, good, [entry("loop-sibling", w)]), "sibling")
        n = refusals(reader, w)
        send(store(owner, batch(cap, w, seq + 1, ref(sibling), [entry("loop-tip", w)]), "loop"))
        refused("loop", "not what", n)
        # A head naming a stored batch with a key that is not that object's.
        n = refusals(reader, w)
        send(ReadCap(log[0].object_id, os.urandom(32)))
        refused("wrong_key", "does not belong", n)

        # The reader still reads the honest writer, and lists nothing of the refused batches.
        n = refusals(reader, w)
        src = owner.home.parent / "after.txt"
        src.write_bytes(b"after")
        owner.cli("put", str(src), "b/after.txt")
        poll(lambda: "after.txt" in live(reader, bid), 30, "the reader to read the owner's new key", every=0.1)
        f.figure("mallory_log_walked_again_on_honest_put", refusals(reader, w) - n)
        listed = every_key(reader, bid)
        f.figure("reader_keys", sorted(listed))
        bad = listed - {"keep.txt", "mallory-ok", "after.txt"}
        f.require(not bad, f"the reader merged entries of logs it refused: {sorted(bad)}")
        f.require(read_to(reader, bid, w) == len(log), "a refused batch moved mallory's log on")

        # 4 MiB of msgpack that unpacks into four million lists, on the reader's event loop,
        # named by two heads (each costs mallory two signatures).
        size = nlog.MAX_BATCH_BYTES - 5
        bomb = store(owner, b"\xdd" + size.to_bytes(4, "big") + b"\x90" * size, "bomb")
        pid = reader.proc.pid
        cpu = cpu_seconds(pid)
        sampler = RssSampler(pid, every=0.02)
        with Watcher(reader, interval=0.05) as watcher:
            for _ in range(2):
                n = refusals(reader, w)
                send(bomb)
                refused("bomb", "max_array_len", n)
            time.sleep(0.3)
        peak = sampler.stop() - sampler.start
        f.figure("bomb_rss_growth", mib(peak))
        f.figure("bomb_cpu_s", round(cpu_seconds(pid) - cpu, 2))
        f.figure("bomb_watcher", str(watcher.report))
        f.require(peak < 64 * MiB, f"two 4 MiB batches grew the reader by {mib(peak)}")
        f.extend(watcher.problems())

        # Last (it costs links): a log cut short: batch N > 1 names no batch before it (an empty `prev`).
        drops = short_ids(owner) + short_ids(reader)
        n = refusals(reader, w)
        send(store(owner, batch(cap, w, seq + 1, b"", [entry("cut-tip", w)]), "cut"))
        refused("cut", "", n)
        dropped = short_ids(owner) + short_ids(reader) - drops
        f.figure("cut_links_dropped", dropped)
        f.require(
            dropped == 0,
            f"following an empty `prev`, the reader asked peers for a 0-byte block: {dropped} "
            "links between members dropped",
        )
        f.require("cut-tip" not in every_key(reader, bid), "the reader merged the tip of a log cut short")
        f.require(reader.proc.poll() is None and owner.proc.poll() is None, "a daemon died")
    finally:
        mallory.close()
    f.check()


def test_a_writer_cannot_destroy_what_it_does_not_own(daemons: Start) -> None:
    f = Findings("bucket-destruction")
    owner, reader, cap, bid = bucket_with_reader(daemons)
    mallory = Mallory(owner, [reader])
    w = mallory.key
    try:
        log: list[ReadCap] = []

        def append(ops: list[list[Any]], name: str, to: tuple[Daemon, ...] = (reader,)) -> None:
            """The next batch of mallory's log (certified by the bucket's key), then its head."""
            seq = len(log) + 1
            log.append(store(owner, batch(cap, w, seq, ref(log[-1]) if log else b"", ops), name))
            for d in to:
                mallory.send(d, [head(mallory.identity, cap, seq, log[-1])])
            poll(lambda: read_to(reader, bid, w) == seq, 30, f"the reader to read {name}", every=0.1)

        # A name on an object the reader owns and never put in a bucket (its ID is in the
        # catalog every member holds; the entry's key is made up), then another object under that
        # name: the reader sees its own object lose its last name, and deletes it, cloud-wide.
        victim = store(reader, os.urandom(50_000), "victim.bin").object_id
        append([entry("bait", w, oid=victim)], "bait")
        append([entry("bait", w)], "switch")
        deadline = time.monotonic() + 5
        while in_catalog(reader, victim) and time.monotonic() < deadline:
            time.sleep(0.1)
        f.figure("victim_kept", (in_catalog(reader, victim), in_catalog(owner, victim)))
        f.require(
            in_catalog(reader, victim),
            "the reader deleted its own object (in no bucket) after a writer named it and named another in its place",
        )

        # A removal dated at the end of time (it would beat every later put for ever) is refused.
        n = refusals(reader, w)
        seq = len(log) + 1
        forever = [entry("keep.txt", w, hlc=END_OF_TIME, removed=True)]
        log.append(store(owner, batch(cap, w, seq, ref(log[-1]), forever), "forever"))
        for d in (owner, reader):
            mallory.send(d, [head(mallory.identity, cap, seq, log[-1])])
        poll(lambda: refusals(reader, w) > n, 30, "the reader to refuse the removal", every=0.1)
        f.require("ahead" in last_refusal(reader, w), f"refused for another reason: {last_refusal(reader, w)!r}")
        src = owner.home.parent / "again.txt"
        src.write_bytes(b"put back")
        owner.cli("put", str(src), "b/keep.txt")
        time.sleep(0.5)
        f.figure("owner_put_back", "keep.txt" in live(owner, bid))
        f.require("keep.txt" in live(owner, bid), "the owner put keep.txt again and does not list it")

    finally:
        mallory.close()
    f.check()
