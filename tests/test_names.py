"""Names: bucket caps, key rules, signed heads, encrypted batches, the merge, and catalog grants."""

import os
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.cloud import catalog
from peercloud.errors import FormatError, RefusedError, UsageError
from peercloud.identity import Identity
from peercloud.names import log as nlog
from peercloud.names.caps import BucketCap, check_key, check_name
from peercloud.store.buckettables import upper_bound
from peercloud.store.index import Index, KeyRow


def test_caps_round_trip_and_refuse_what_they_cannot_do() -> None:
    cap = BucketCap.new("replica-2")
    assert cap.writable and BucketCap.parse(str(cap)) == cap
    reader = cap.reader()
    assert not reader.writable and BucketCap.parse(str(reader)) == reader
    assert str(reader).startswith("pcbr1_") and str(cap).startswith("pcbw1_")
    assert reader.signer == cap.signer and reader.read_key == cap.read_key
    with pytest.raises(UsageError):
        _ = reader.owner
    with pytest.raises(UsageError):
        _ = reader.signing
    text = str(reader)
    altered = text[:-3] + ("a" if text[-3] != "a" else "b") + text[-2:]
    with pytest.raises(UsageError):
        BucketCap.parse(altered)
    with pytest.raises(UsageError):
        BucketCap.parse("pcr1_" + text[6:])
    nxt = BucketCap.new("replica-2", cap.bucket_id, cap.epoch + 1)
    assert nxt.bucket_id == cap.bucket_id and nxt.read_key != cap.read_key and nxt.signer != cap.signer


def test_key_and_name_rules() -> None:
    for good in ["a", "photos/2026/x.jpg", "ü/日本", "a/b/", "x" * 1024, "dir/.hidden"]:
        assert check_key(good) == good.encode()
    for bad in ["", "/a", "a//b", "a/./b", "../x", "a/../b", "tab\there", "nul\x00", "x" * 1025, "é" * 513]:
        with pytest.raises(UsageError):
            check_key(bad)
    assert check_name("photos-2026.v1") == "photos-2026.v1"
    for bad in ["", "Photos", "a/b", ".hidden", "x" * 64, "spa ce"]:
        with pytest.raises(UsageError):
            check_name(bad)


def test_heads_are_signed_certified_and_sealed() -> None:
    cap, writer = BucketCap.new("replica-2"), Identity.generate()
    me = writer.peer_id.public_key
    batch_id, batch_key = os.urandom(32), os.urandom(32)
    head = nlog.Head.sign(writer, cap, nlog.certify(cap, me), 7, batch_id, batch_key)
    data = head.encode()
    assert len(data) == nlog.HEAD_SIZE == 321
    assert nlog.peek(data) == (cap.bucket_id, cap.epoch, me, 7)
    back = nlog.Head.decode(data)
    assert back.batch_id == batch_id and back.batch_key(cap) == batch_key and back.batch_key(cap.reader()) == batch_key
    for i in range(0, len(data), 7):  # any altered byte: refused (signature, cert or size)
        bad = bytearray(data)
        bad[i] ^= 1
        with pytest.raises(FormatError):
            nlog.Head.decode(bytes(bad))
    # A reader cannot certify itself: its cert would be by another key than the bucket's signer.
    other = BucketCap.new("replica-2", cap.bucket_id)
    forged = nlog.Head.sign(writer, other, nlog.certify(other, me), 8, batch_id, batch_key)
    assert forged.signer != cap.signer
    with pytest.raises(FormatError):
        forged.batch_key(cap)
    with pytest.raises(FormatError):  # a cert by another key than the head names
        nlog.Head.sign(writer, cap, nlog.certify(other, me), 8, batch_id, batch_key)
    with pytest.raises(FormatError):  # another writer cannot reuse this writer's cert
        nlog.Head.sign(Identity.generate(), cap, nlog.certify(cap, me), 9, batch_id, batch_key)


def entry(key: str, hlc: int, writer: bytes, removed: bool = False, oid: bytes | None = None) -> nlog.Entry:
    if removed:
        return nlog.Entry(key, hlc, writer, True)
    return nlog.Entry(
        key, hlc, writer, False, oid or os.urandom(32), os.urandom(32), 5, 1.5, "text/plain", "c", {"k": "v"}
    )


def test_batches_decode_only_what_a_writer_could_write() -> None:
    w = os.urandom(32)
    batch = nlog.Batch(os.urandom(16), 1, w, 3, os.urandom(64), (entry("a/b", 5, w), entry("c", 6, w, removed=True)))
    assert nlog.Batch.decode(batch.encode()) == batch
    with pytest.raises(FormatError):
        nlog.Batch.decode(b"\xc1garbage")
    with pytest.raises(FormatError):
        nlog.Batch.decode(b"x" * (nlog.MAX_BATCH_BYTES + 1))
    body = msgpack.unpackb(batch.encode(), raw=False)
    for change in (
        {"s": 0},
        {"p": b"short"},
        {"o": []},
        {"o": [["../up", 1, False, b"o" * 32, b"k" * 32, 1, 1.0, "", "", {}]]},
        {"o": [["ok", 1, True, b"o" * 32, b"", 0, 0.0, "", "", {}]]},  # a removal names no object
        {"o": [["ok", -1, False, b"o" * 32, b"k" * 32, 1, 1.0, "", "", {}]]},
        {"o": [["ok", 1, False, b"o" * 32, b"k" * 32, 1, 1.0, "", "", {"m": "x" * 3000}]]},
        {"o": [["ok"] * 11]},
        {"v": 9},
    ):
        with pytest.raises(FormatError):
            nlog.Batch.decode(msgpack.packb({**body, **change}, use_bin_type=True))


def test_clock_moves_past_what_it_sees_but_not_far_ahead() -> None:
    clock = nlog.Clock()
    a = clock.tick()
    assert clock.tick() > a
    clock.observe(a + (5 << 16))
    assert clock.tick() > a + (5 << 16)
    far = (clock.last >> 16) + 10 * nlog.FUTURE_SLACK_MS
    clock.observe(far << 16)
    assert clock.tick() >> 16 < far


ROW = st.tuples(st.sampled_from(["a", "a/b", "a/c", "b", "é"]), st.integers(1, 6), st.integers(0, 2), st.booleans())


@settings(max_examples=40, deadline=None)
@given(st.lists(ROW, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_merge_converges_whatever_the_order(
    tmp_path_factory: pytest.TempPathFactory, rows: list, rnd: random.Random
) -> None:  # type: ignore[type-arg]
    """Two nodes merging the same entries in different orders list the same keys, each the entry
    with the greatest (hlc, writer), removals included; a writer's two entries of one clock
    (a hostile writer's) are ordered by their content."""
    writers = [bytes([i]) * 32 for i in range(3)]
    bucket = b"b" * 16
    entries = [
        KeyRow(
            bucket,
            k,
            hlc,
            writers[w],
            gone,
            b"" if gone else bytes([hlc]) * 32,
            b"" if gone else b"k" * 32,
            1,
            0.0,
            "",
            "",
            {},
        )
        for k, hlc, w, gone in rows
    ]
    views = []
    for _ in range(2):
        shuffled = entries[:]
        rnd.shuffle(shuffled)
        index = Index(Path(tmp_path_factory.mktemp("m")) / "index.sqlite")
        for start in range(0, len(shuffled), 3):
            index.merge_names(bucket, shuffled[start : start + 3])
        views.append({k: index.key_row(bucket, k) for k in {r.key for r in entries}})
        index.close()
    assert views[0] == views[1]
    for key, row in views[0].items():
        best = max((r for r in entries if r.key == key), key=lambda r: (r.hlc, r.writer, r.removed, r.object_id))
        assert row is not None and (row.hlc, row.writer, row.removed, row.object_id) == (
            best.hlc,
            best.writer,
            best.removed,
            best.object_id,
        )


def test_listing_by_prefix_in_byte_order(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    bucket = b"b" * 16
    names = ["a", "a/1", "a/2", "a0", "ab", "b", "é/x", "\U0010ffff", "\ud7ff", "\ue000"]
    rows = [KeyRow(bucket, k, 1, b"w" * 32, False, os.urandom(32), os.urandom(32), 1, 0.0, "", "", {}) for k in names]
    index.merge_names(bucket, rows)
    assert [r.key for r in index.list_keys(bucket, "a/", "", 100)] == ["a/1", "a/2"]
    assert [r.key for r in index.list_keys(bucket, "a", "", 100)] == ["a", "a/1", "a/2", "a0", "ab"]
    assert [r.key for r in index.list_keys(bucket, "", "a0", 3)] == ["a0", "ab", "b"]
    assert [r.key for r in index.list_keys(bucket, "\U0010ffff", "", 10)] == ["\U0010ffff"]
    assert upper_bound("a/") == "a0" and upper_bound("\ud7ff") == "\ue000" and upper_bound("\U0010ffff") is None
    index.close()


def test_catalog_grants_let_a_member_write_for_an_owner_key() -> None:
    author, owner, cloud = Identity.generate(), Identity.generate(), os.urandom(16)
    op = catalog.Op(catalog.REMOVE, os.urandom(32), 1.0)
    grant = catalog.grant(owner, cloud, author.peer_id.public_key)
    batch = catalog.Batch.sign(author, cloud, 1, catalog.NO_PREV, 1.0, [op], owner.peer_id.public_key, grant)
    back = catalog.Batch.decode(batch.encode())
    assert back.owner_key == owner.peer_id.public_key and back.author == author.peer_id
    plain = catalog.Batch.sign(author, cloud, 1, catalog.NO_PREV, 1.0, [op])
    assert catalog.Batch.decode(plain.encode()).owner_key == author.peer_id.public_key
    # A grant to another author, or by another key, is refused.
    wrong = catalog.grant(owner, cloud, Identity.generate().peer_id.public_key)
    forged = catalog.Batch.sign(author, cloud, 1, catalog.NO_PREV, 1.0, [op], owner.peer_id.public_key, wrong)
    with pytest.raises(FormatError):
        catalog.Batch.decode(forged.encode())
    # An erase is only ever an admin's own entry.
    erase = catalog.Op(catalog.ERASE, os.urandom(32), 1.0)
    batch = catalog.Batch.sign(author, cloud, 1, catalog.NO_PREV, 1.0, [erase], owner.peer_id.public_key, grant)
    with pytest.raises(RefusedError):
        catalog.Batch.decode(batch.encode()).check(cloud, [author.peer_id], 0, catalog.NO_PREV, 0, 2.0)
