import os
import threading
from pathlib import Path

import pytest

from peercloud.content import merkle
from peercloud.errors import IntegrityError, NotFoundError, QuotaExceededError
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Index, ObjectRecord

from .conftest import random_bytes


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path, Index(tmp_path / "index.sqlite"))


def test_put_get_round_trip_and_dedupe(store: BlockStore) -> None:
    data = random_bytes(200_000)
    bid = store.put(data)
    assert bid == merkle.block_id(data)
    assert store.get(bid) == data
    assert store.has(bid)
    used = store.used
    assert store.put(data) == bid
    assert store.used == used == 200_000
    assert store.index.used_bytes() == used


def test_put_with_wrong_expected_id_stores_nothing(store: BlockStore) -> None:
    with pytest.raises(IntegrityError, match="failed verification"):
        store.put(b"payload", expect=merkle.block_id(b"other"))
    assert store.index.block_ids() == []
    assert not any(store.blocks_dir.rglob("*?" * 10))


def test_corrupt_or_truncated_block_is_never_returned(store: BlockStore) -> None:
    bid = store.put(random_bytes(100_000))
    path = store.path(bid)
    raw = bytearray(path.read_bytes())
    raw[500] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=bid.hex()):
        store.get(bid)
    path.write_bytes(bytes(raw[:1000]))
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get(bid)
    path.unlink()
    with pytest.raises(NotFoundError):
        store.get(bid)


def test_quota(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, Index(tmp_path / "i.sqlite"), quota=250_000)
    store.put(random_bytes(200_000, 1))
    with pytest.raises(QuotaExceededError, match="quota reached"):
        store.put(random_bytes(100_000, 2))
    assert store.used == 200_000
    assert len(store.index.block_ids()) == 1
    store.put(random_bytes(50_000, 3))  # exactly up to the quota is fine


def test_abort_removes_staged_files_and_reservation(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, Index(tmp_path / "i.sqlite"), quota=10**6)
    staged = [store.stage(random_bytes(1000, i)) for i in range(5)]
    assert store.used == 5000
    store.abort(staged)
    assert store.used == 0
    assert not any(p.is_file() for p in store.blocks_dir.rglob("*"))
    assert store.index.block_ids() == []


def test_staging_from_many_threads(store: BlockStore) -> None:
    blobs = [random_bytes(70_000, i % 7) for i in range(40)]  # duplicates on purpose
    results = []
    lock = threading.Lock()

    def work(b: bytes) -> None:
        s = store.stage(b)
        with lock:
            results.append(s)

    threads = [threading.Thread(target=work, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.commit(results)
    assert sorted(store.index.block_ids()) == sorted({(merkle.block_id(b), len(b)) for b in blobs})
    assert store.used == 7 * 70_000


def test_pins_and_gc(store: BlockStore) -> None:
    a, b, c = (random_bytes(1000, i) for i in range(3))
    ids = [store.put(x) for x in (a, b, c)]
    manifest_id = store.put(b"pretend manifest")
    record = ObjectRecord(manifest_id, "f", 2000, "replica-1", 0.0, None)
    store.index.add_object(record, [(0, 0, ids[0]), (1, 0, ids[1])], pin=True)
    assert store.index.is_pinned(manifest_id)
    assert store.gc() == 1  # c belongs to nothing pinned
    assert not store.has(ids[2])
    assert not store.path(ids[2]).exists()
    assert store.has(ids[0])
    assert store.has(manifest_id)
    store.index.unpin(manifest_id)
    assert store.gc() == 3
    assert store.used == 0


def test_index_survives_reopen_and_uses_wal(tmp_path: Path) -> None:
    index = Index(tmp_path / "i.sqlite")
    store = BlockStore(tmp_path, index)
    bid = store.put(b"durable")
    index.close()
    again = Index(tmp_path / "i.sqlite")
    assert again.has_block(bid)
    assert again._query("PRAGMA journal_mode")[0][0] == "wal"


def test_write_failure_leaves_nothing(store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(path: Path, data: bytes) -> None:
        path.write_bytes(data[:100])  # a partial temp file, as a full disk leaves it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("peercloud.store.blockstore.write_new_file_direct", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.put(b"x" * 5000)
    assert store.used == 0
    assert store.index.block_ids() == []
    assert os.listdir(store.tmp_dir) == []


def test_concurrent_stage_of_one_block_waits_for_the_writer(store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from peercloud.store import blockstore

    real = blockstore.write_new_file_direct
    monkeypatch.setattr(blockstore, "write_new_file_direct", lambda path, data: (time.sleep(0.3), real(path, data)))
    data = random_bytes(10_000, 9)
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(store.stage(data)))
    first.start()
    time.sleep(0.05)
    second = store.stage(data)  # while the first thread is still writing
    assert second.new is False
    assert store.path(second.block_id).exists()  # it only answered once the file was durable
    first.join()
    store.commit([*results, second])  # type: ignore[list-item]
    assert store.has(second.block_id)
    assert store.used == 10_000
