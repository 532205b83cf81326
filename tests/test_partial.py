"""A get's partial file and journal, and the segment writer, on real files (no daemon)."""

import os
from dataclasses import replace
from pathlib import Path

import pytest

from peercloud.content.erasure import Coding
from peercloud.content.segment import encode_bytes
from peercloud.errors import IntegrityError, NotFoundError
from peercloud.node.retrieve import MemoryOutput, SegmentWriter
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Index
from peercloud.store.partial import HEADER_SIZE, RECORD, PartialFile

from .conftest import random_bytes

SEG = 64 * 1024
KEY = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    (tmp_path / "node").mkdir()
    return BlockStore(tmp_path / "node", Index(tmp_path / "node" / "index.sqlite"))


def written(out: Path, oid: bytes, size: int, segments: list[int], data: bytes) -> PartialFile:
    partial = PartialFile(out, oid, size, SEG)
    for s in segments:
        partial.write(s, memoryview(data[s * SEG : (s + 1) * SEG]))
    partial.sync()
    return partial


def test_a_journal_resumes_its_segments_and_ignores_a_torn_tail(tmp_path: Path) -> None:
    data = random_bytes(5 * SEG + 7, seed=1)
    oid, out = os.urandom(32), tmp_path / "f.bin"
    written(out, oid, len(data), [0, 3], data).close()
    journal = next(tmp_path.glob(".f.bin.*.journal"))
    assert journal.stat().st_size == HEADER_SIZE + 2 * RECORD.size
    with open(journal, "ab") as f:
        f.write(bytes(RECORD.size) + b"\x01\x02\x03")  # a zero-filled record and a torn one
    again = PartialFile(out, oid, len(data), SEG)
    assert again.done == {0, 3}
    for s in (1, 2, 4, 5):
        again.write(s, memoryview(data[s * SEG : (s + 1) * SEG]))
    again.finish()
    assert out.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_journal_of_another_object_or_size_is_not_trusted(tmp_path: Path) -> None:
    data = random_bytes(3 * SEG, seed=2)
    oid, out = os.urandom(32), tmp_path / "f.bin"
    written(out, oid, len(data), [0, 1], data).close()
    assert PartialFile(out, oid, len(data) + 1, SEG).done == set()  # same object ID prefix, other size
    other = oid[:8] + os.urandom(24)  # same 16-hex-digit name, another object
    assert PartialFile(out, other, len(data), SEG).done == set()


def test_a_get_that_kept_nothing_leaves_nothing(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path / "f.bin", os.urandom(32), 3 * SEG, SEG)
    partial.abandon(NotFoundError("no peer has it"))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_get_says_what_it_kept(tmp_path: Path) -> None:
    data = random_bytes(4 * SEG, seed=3)
    partial = written(tmp_path / "f.bin", os.urandom(32), len(data), [0, 1, 2], data)
    error = NotFoundError("3 blocks are not held by any reachable peer")
    partial.abandon(error)
    assert "3 of 4 segments (192 KiB) are verified and kept in" in str(error)
    assert str(partial.path) in str(error)


def test_the_writer_recreates_every_block_of_a_written_segment(store: BlockStore) -> None:
    data = random_bytes(3 * SEG + 100, seed=4)
    manifest, blocks = encode_bytes(data, KEY, Coding(2, 3), SEG)
    output = MemoryOutput(manifest)
    writer = SegmentWriter(store, manifest, KEY, output)
    groups, local = writer.plan()
    assert not local and [g.need for g in groups] == [2, 2, 2, 2]
    writer.accept(manifest.block(1, 0), blocks[3])
    assert writer.block(manifest.block(1, 2)) is None  # segment 1 is not written yet
    writer.accept(manifest.block(1, 2), blocks[5])
    for share in range(3):  # all three shares, from the plaintext it wrote
        assert writer.block(manifest.block(1, share)) == blocks[3 + share]
    assert writer.bitmap() == bytes([0b00011100, 0])
    with pytest.raises(IntegrityError, match="failed verification"):
        writer.accept(manifest.block(0, 0), blocks[1])
    with pytest.raises(IntegrityError, match="never written"):
        writer.finish()
    for seg in (0, 2, 3):
        for share in (0, 1):
            writer.accept(manifest.block(seg, share), blocks[seg * 3 + share])
    writer.finish()
    assert bytes(output.data) == data


def test_a_manifest_listing_a_block_twice_is_refused(store: BlockStore) -> None:
    manifest, _ = encode_bytes(random_bytes(2 * SEG, seed=5), KEY, Coding(1, 1), SEG)
    twice = replace(manifest, block_ids=manifest.block_ids[:32] * 2)
    with pytest.raises(IntegrityError, match="lists a block twice"):
        SegmentWriter(store, twice, KEY, MemoryOutput(twice))
