"""A bucket's keys as users see them: put, list, get, move and remove (`node/buckets.py` adds the
buckets themselves). The logs behind them travel by `node/bucketsync.py`; the rules are `names/`'s.

A put adds the file as a cloud object of the bucket's class and, in the same transaction, names
it in the bucket: a crash leaves either both or neither. Removing a key (or a move's source)
writes a tombstone; an object this node owns is deleted with its holders' agreement ([4/6]) once
no key of a bucket this node reads names it any more.
"""

import asyncio
import mimetypes
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from peercloud.content.caps import ReadCap
from peercloud.errors import NotFoundError, UsageError
from peercloud.names import log as nlog
from peercloud.names.caps import BucketCap, check_key, check_name
from peercloud.node.bucketsync import BucketSync
from peercloud.node.catalog import CatalogSync
from peercloud.node.deletion import Deletions
from peercloud.node.ingest import AddResult
from peercloud.node.local import LocalNode
from peercloud.node.membership import Membership
from peercloud.store.buckettables import upper_bound
from peercloud.store.index import Index, KeyRow, ObjectRecord

Progress = Callable[[int], None]
LIST_PAGE = 1000


class Service(Protocol):
    """What bucket operations use of the node service."""

    node: LocalNode
    membership: Membership
    deletions: Deletions
    catalog: CatalogSync

    async def add(
        self,
        path: Path,
        class_name: str | None,
        convergent: bool,
        progress: Progress | None,
        also: Callable[[sqlite3.Connection, ObjectRecord], None] | None = None,
        owner: bytes | None = None,
    ) -> AddResult:
        """Add a file to the cloud, with more written in its transaction, owned by `owner`."""
        ...

    async def get(self, text: str, out: Path, progress: Progress | None) -> tuple[Path, Any]:
        """Fetch and decrypt an object to `out`."""
        ...


def split_path(text: str) -> tuple[str, str]:
    """`BUCKET/KEY` (or `BUCKET/PREFIX/`, or `BUCKET`) into its alias and the rest."""
    name, _, rest = text.partition("/")
    return check_name(name), rest


def key_json(r: KeyRow) -> dict[str, Any]:
    """A key as listings show it."""
    return {
        "key": r.key,
        "object_id": r.object_id.hex(),
        "size": r.size,
        "modified": r.mtime,
        "content_type": r.content_type,
        "class": r.storage_class,
        "meta": r.meta,
        "writer": r.writer.hex(),
    }


class Keys:
    """Operations on keys; `Buckets` supplies the lookups and what becomes of unnamed objects."""

    service: Service
    sync: BucketSync
    index: Index
    me: bytes

    def _find(self, name: str) -> tuple[bytes, BucketCap]:
        raise NotImplementedError

    def _writable(self, name: str) -> tuple[bytes, BucketCap]:
        raise NotImplementedError

    async def _release(self, objects: set[bytes]) -> set[bytes]:
        raise NotImplementedError

    def _row(self, bid: bytes, key: str, removed: bool = False, **fields: Any) -> KeyRow:
        base: dict[str, Any] = {
            "object_id": b"",
            "object_key": b"",
            "size": 0,
            "mtime": 0.0,
            "content_type": "",
            "storage_class": "",
            "meta": {},
        }
        base.update(fields)
        return KeyRow(bid, key, self.sync.clock.tick(), self.me, removed, **base)

    async def put(
        self, source: str, target: str, progress: Progress | None, meta: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """`put FILE BUCKET/KEY` (a key ending in '/' takes the file's name), `put DIR
        BUCKET/PREFIX/` (every file under DIR), or `put CAP BUCKET/KEY` (name an object already
        in the cloud)."""
        name, key = split_path(target)
        bid, cap = self._writable(name)
        path = Path(source)
        if path.is_dir():
            return await self._put_tree(bid, cap, name, path, key, progress)
        if not path.exists() and os.sep not in source and source.lower().startswith("pcr1_"):
            return await self._name_object(bid, name, source, key)
        if not key or key.endswith("/"):
            key += path.name
        check_key(key)
        result = await self._put_file(bid, cap, path, key, progress, meta or {})
        return self._put_json(result, name, key)

    async def _put_file(
        self,
        bid: bytes,
        cap: BucketCap,
        path: Path,
        key: str,
        progress: Progress | None,
        meta: dict[str, str],
        flush: bool = True,
    ) -> AddResult:
        mtime = path.stat().st_mtime
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        old = self.index.key_row(bid, key)

        def name_it(db: sqlite3.Connection, record: ObjectRecord) -> None:
            assert record.read_key is not None
            row = self._row(
                bid,
                key,
                object_id=record.object_id,
                object_key=record.read_key,
                size=record.size,
                mtime=mtime,
                content_type=ctype,
                storage_class=record.storage_class,
                meta=meta,
            )
            self.index.put_names(db, [row])

        owner = cap.owner_pair
        assert owner is not None
        result = await self.service.add(path, cap.storage_class, False, progress, also=name_it, owner=owner[0])
        if flush:
            self.sync.flush_soon(bid)
        if old is not None and not old.removed and old.object_id != result.manifest.object_id:
            await self._release({old.object_id})
        return result

    def _put_json(self, result: AddResult, bucket: str, key: str) -> dict[str, Any]:
        """What `add --json` gives, and where the object is named."""
        return {**result.as_json(), "bucket": bucket, "key": key}

    async def _put_tree(
        self, bid: bytes, cap: BucketCap, name: str, root: Path, prefix: str, progress: Progress | None
    ) -> dict[str, Any]:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        keys = [prefix + p.relative_to(root).as_posix() for p in files]
        for key in keys:
            check_key(key)  # every key checked before anything is added
        total = 0
        for i, (path, key) in enumerate(zip(files, keys, strict=True), start=1):
            # A tree's entries go in full batches (a batch per 50 ms of puts would make readers
            # fetch thousands of small ones), the rest when the tree is done. The put waits for
            # each: a flush running beside the next puts would write their entries as they come.
            result = await self._put_file(bid, cap, path, key, progress, {}, flush=False)
            total += result.manifest.size
            if i % nlog.MAX_OPS == 0:
                await self.sync.flush(bid)
        await self.sync.flush(bid)
        return {"bucket": name, "prefix": prefix, "files": len(files), "bytes": total}

    async def _name_object(self, bid: bytes, name: str, text: str, key: str) -> dict[str, Any]:
        cap = self.service.node.resolve(text)
        if not isinstance(cap, ReadCap):
            raise UsageError("naming an object takes its read cap (pcr1_…): readers of the bucket must decrypt it")
        entries = self.index.catalog(cap.object_id)
        if not entries:
            raise NotFoundError(f"object {cap.object_id.hex()[:12]} is not in the cloud's catalog")
        if not key or key.endswith("/"):
            raise UsageError("naming an object by its cap needs a whole key, not a prefix")
        check_key(key)
        e = entries[0]
        row = self._row(
            bid,
            key,
            object_id=cap.object_id,
            object_key=cap.key,
            size=e.size,
            mtime=time.time(),
            content_type="application/octet-stream",
            storage_class=e.storage_class,
        )
        await asyncio.to_thread(self.index.write_names, [row])
        await self.sync.flush(bid)
        return {"object_id": cap.object_id.hex(), "size": e.size, "class": e.storage_class, "bucket": name, "key": key}

    def ls(self, target: str, recursive: bool, start: str = "", limit: int = 0) -> dict[str, Any]:
        """Keys under `BUCKET[/PREFIX]`: with `recursive` all of them, else those at this level
        and the common prefixes below it (S3's delimiter '/'); from `start`, at most `limit`."""
        name, prefix = split_path(target)
        bid, _ = self._find(name)
        keys: list[dict[str, Any]] = []
        prefixes: list[str] = []
        cursor = start
        limit = limit or 1 << 62
        truncated = False
        while not truncated:
            rows = self.index.list_keys(bid, prefix, cursor, LIST_PAGE)
            if not rows:
                break
            for r in rows:
                if len(keys) + len(prefixes) >= limit:
                    truncated = True
                    break
                rest = r.key[len(prefix) :]
                if not recursive and "/" in rest:
                    common = prefix + rest.split("/", 1)[0] + "/"
                    prefixes.append(common)
                    cursor = upper_bound(common) or "\U0010ffff"
                    break
                keys.append(key_json(r))
                cursor = r.key + "\x00"
        return {"bucket": name, "prefix": prefix, "keys": keys, "prefixes": prefixes, "truncated": truncated}

    def _live(self, bid: bytes, name: str, key: str) -> KeyRow:
        row = self.index.key_row(bid, key)
        if row is None or row.removed:
            raise NotFoundError(f"no key {key!r} in bucket {name!r}")
        return row

    async def get(self, target: str, out: Path | None, cwd: Path, progress: Progress | None) -> dict[str, Any]:
        """`get BUCKET/KEY [-o OUT]`, or `get BUCKET/PREFIX/ -o DIR` (every key under it)."""
        name, key = split_path(target)
        bid, _ = self._find(name)
        if key == "" or key.endswith("/"):
            if out is None:
                raise UsageError("getting a prefix needs -o DIR")
            return await self._get_tree(bid, name, key, cwd / out, progress)
        row = self._live(bid, name, key)
        dest = cwd / out if out is not None else cwd / key.rsplit("/", 1)[-1]
        if dest.is_dir():
            dest = dest / key.rsplit("/", 1)[-1]
        path, _ = await self.service.get(str(ReadCap(row.object_id, row.object_key)), dest, progress)
        return {"bucket": name, "key": key, "path": str(path), "size": row.size, "object_id": row.object_id.hex()}

    async def _get_tree(
        self, bid: bytes, name: str, prefix: str, root: Path, progress: Progress | None
    ) -> dict[str, Any]:
        rows: list[KeyRow] = []
        cursor = ""
        while page := self.index.list_keys(bid, prefix, cursor, LIST_PAGE):
            rows += page
            cursor = page[-1].key + "\x00"
        names = {r.key[len(prefix) :] for r in rows}
        folders = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
        clash = next((n for n in sorted(names) if n in folders), None)
        if clash is not None:  # found before anything is written
            raise UsageError(
                f"key {prefix + clash!r} would be both a file and a folder under {root}: get keys one by one"
            )
        written = 0
        for r in rows:
            dest = root / r.key[len(prefix) :]
            if r.key.endswith("/"):  # a folder marker, as S3 tools make them
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            await self.service.get(str(ReadCap(r.object_id, r.object_key)), dest, progress)
            written += r.size
        return {"bucket": name, "prefix": prefix, "path": str(root), "files": len(rows), "bytes": written}

    async def move(self, source: str, target: str) -> dict[str, Any]:
        """Rename a key (within or across buckets this node writes): the object stays, only its
        name changes. A target ending in '/' keeps the key's last segment."""
        src_name, src_key = split_path(source)
        dst_name, dst_key = split_path(target)
        src_bid, _ = self._writable(src_name)
        dst_bid, _ = self._writable(dst_name)
        row = self._live(src_bid, src_name, src_key)
        if not dst_key or dst_key.endswith("/"):
            dst_key += src_key.rsplit("/", 1)[-1]
        check_key(dst_key)
        if (src_bid, src_key) == (dst_bid, dst_key):
            raise UsageError("source and target are the same key")
        displaced = self.index.key_row(dst_bid, dst_key)
        new = self._row(
            dst_bid,
            dst_key,
            object_id=row.object_id,
            object_key=row.object_key,
            size=row.size,
            mtime=row.mtime,
            content_type=row.content_type,
            storage_class=row.storage_class,
            meta=row.meta,
        )
        await asyncio.to_thread(self.index.write_names, [new, self._row(src_bid, src_key, removed=True)])
        for bid in {src_bid, dst_bid}:
            await self.sync.flush(bid)
        if displaced is not None and not displaced.removed and displaced.object_id != row.object_id:
            await self._release({displaced.object_id})
        return {"from": f"{src_name}/{src_key}", "to": f"{dst_name}/{dst_key}", "object_id": row.object_id.hex()}

    async def remove(self, name: str, key: str, recursive: bool = False) -> dict[str, Any]:
        """`rm BUCKET/KEY` (or every key under a prefix with `recursive`): the names go; objects
        this node owns that no name points at any more are deleted with their holders' agreement."""
        bid, _ = self._writable(name)
        if recursive:
            rows: list[KeyRow] = []
            cursor = ""
            while page := self.index.list_keys(bid, key, cursor, LIST_PAGE):
                rows += page
                cursor = page[-1].key + "\x00"
        else:
            rows = [self._live(bid, name, key)]
        tombs = [self._row(bid, r.key, removed=True) for r in rows]
        await asyncio.to_thread(self.index.write_names, tombs)
        await self.sync.flush(bid)
        deleted = await self._release({r.object_id for r in rows})
        return {"bucket": name, "removed": len(rows), "objects_deleted": sorted(o.hex() for o in deleted)}
