"""Adding a file: segment, encrypt, code, hash and store blocks, then the manifest, then the record.

The object row is written last, in one transaction with its block list, after every block is
durable: a crash or a full quota at any point leaves no visible half-object.
"""

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peercloud.cloud import catalog
from peercloud.cloud.classes import StorageClass
from peercloud.content import cipher
from peercloud.content.caps import ReadCap
from peercloud.content.manifest import Manifest
from peercloud.content.segment import SegmentCodec
from peercloud.errors import NotFoundError, UsageError
from peercloud.node.pipeline import ordered_map
from peercloud.store.blockstore import BlockStore, Staged
from peercloud.store.index import ObjectRecord

MANIFEST_SEGMENT = -1  # object_blocks row that names the manifest block itself
COMMIT_BYTES = 64 * 1024 * 1024

Progress = Callable[[int], None]


@dataclass(frozen=True)
class AddResult:
    """What `add` reports: the object's ID and caps, and what storing it cost."""

    manifest: Manifest
    read_cap: ReadCap
    name: str
    storage_class: str
    new_bytes: int

    def as_json(self) -> dict[str, Any]:
        """What `add --json` gives (and `put --json`, with the bucket and key)."""
        m = self.manifest
        return {
            "object_id": m.object_id.hex(),
            "read_cap": str(self.read_cap),
            "verify_cap": str(self.read_cap.verify_cap),
            "name": self.name,
            "size": m.size,
            "class": self.storage_class,
            "segments": m.segment_count,
            "blocks": len(m.blocks()) + 1,
            "new_bytes": self.new_bytes,
        }


def _segments(f: Path, segment_size: int) -> Iterator[tuple[int, bytes]]:
    with open(f, "rb", buffering=0) as fh:
        index = 0
        while chunk := fh.read(segment_size):
            yield index, chunk
            index += 1


def _convergent_key(store_secret: bytes, path: Path, segment_size: int, cls: StorageClass) -> bytes:
    params = f"{segment_size}:{cls.coding.k}:{cls.coding.n}".encode()
    return cipher.convergent_key(store_secret, params, (c for _, c in _segments(path, segment_size)))


def add_file(
    store: BlockStore,
    path: Path,
    cls: StorageClass,
    *,
    segment_size: int,
    workers: int,
    convergence_secret: bytes | None = None,
    progress: Progress | None = None,
    owner: bytes | None = None,
    author: bytes = b"",
    also: Callable[[sqlite3.Connection, ObjectRecord], None] | None = None,
) -> AddResult:
    """Store the file at `path` as a new object of class `cls` on this node.

    `owner` (this node's public key, or an owner key it writes for as `author`): the object
    joins this node's cloud (its catalog entry, owned by `owner`, and holds) instead of being
    pinned. `also` writes more in the transaction that records the object (a bucket's name for
    it: named if and only if added).
    """
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UsageError(f"{path} is not a regular file")
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {path}") from None
    key = (
        _convergent_key(convergence_secret, path, segment_size, cls)
        if convergence_secret is not None
        else cipher.random_key()
    )
    codec = SegmentCodec(key, cls.coding)

    def seal(item: tuple[int, bytes]) -> tuple[int, list[Staged]]:
        index, plaintext = item
        staged: list[Staged] = []
        try:
            for block in codec.seal(index, plaintext):
                staged.append(store.stage(block))
        except BaseException:
            store.abort(staged)
            raise
        return len(plaintext), staged

    committed: list[Staged] = []
    batch: list[Staged] = []
    batch_bytes = 0
    ids: list[bytes] = []
    read = 0
    try:
        results = ordered_map(seal, _segments(path, segment_size), workers, on_abandon=lambda r: store.abort(r[1]))
        with closing(results):
            for length, staged in results:
                batch.extend(staged)
                batch_bytes += sum(s.size for s in staged)
                ids.extend(s.block_id for s in staged)
                read += length
                if batch_bytes >= COMMIT_BYTES:
                    store.commit(batch)
                    committed.extend(batch)
                    batch, batch_bytes = [], 0
                if progress:
                    progress(length)
        store.commit(batch)
        committed.extend(batch)
        batch = []
        if read != size:
            raise UsageError(f"{path} changed size while being added ({size} -> {read} bytes); add it again")
        manifest = Manifest(read, segment_size, cls.coding, cipher.key_check(key), b"".join(ids))
        staged_manifest = store.stage(manifest.encode())
        store.commit([staged_manifest])
        committed.append(staged_manifest)
        record = ObjectRecord(manifest.object_id, path.name, read, cls.name, time.time(), key)
        blocks = [*manifest.blocks(), (MANIFEST_SEGMENT, 0, manifest.object_id)]
        entry = None
        if owner is not None:
            k, n, total = cls.coding.k, cls.coding.n, len(manifest.blocks())
            op = catalog.Op(catalog.PUT, manifest.object_id, record.added_at, cls.name, total, k, n, read)
            entry = catalog.owned(op, owner, {cls.name: cls}, author)
        store.index.add_object(
            record, blocks, pin=owner is None, catalog=entry, also=(lambda db: also(db, record)) if also else None
        )
    except BaseException:
        store.abort(batch)
        # Blocks this add made visible but no object references must not linger as garbage.
        new = [s.block_id for s in committed if s.new]
        referenced = store.index.referenced(new)
        store.delete(b for b in new if b not in referenced)
        raise
    return AddResult(
        manifest,
        ReadCap(manifest.object_id, key),
        path.name,
        cls.name,
        sum(s.size for s in committed if s.new),
    )
