"""Buckets as users see them: create, share, import, unshare, remove; put, list, get, move and
remove keys. The logs behind them travel by `node/bucketsync.py`; the rules are `names/`'s.

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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peercloud.cloud import catalog
from peercloud.content.caps import ReadCap
from peercloud.errors import NotFoundError, PeercloudError, RefusedError, UsageError
from peercloud.identity import Identity
from peercloud.names.caps import BucketCap, check_key, check_name
from peercloud.node.bucketsync import BucketSync
from peercloud.node.catalog import CatalogSync
from peercloud.node.deletion import Deletions
from peercloud.node.ingest import AddResult
from peercloud.node.local import LocalNode
from peercloud.node.membership import Membership
from peercloud.store.buckettables import upper_bound
from peercloud.store.index import KeyRow, ObjectRecord, OwnedEntry

Progress = Callable[[int], None]
LIST_PAGE = 1000
IMPORT_WAIT = 120.0  # seconds `bucket import` waits to read what the writers wrote so far


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


def is_name(text: str) -> bool:
    """Whether a CLI argument names a bucket key rather than an object (caps and IDs have no '/')."""
    return "/" in text


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


class Buckets:
    """The bucket operations of one node."""

    def __init__(self, service: Service, sync: BucketSync) -> None:
        self.service = service
        self.sync = sync
        self.index = service.node.index
        self.me = sync.me

    # -- buckets

    def _find(self, name: str) -> tuple[bytes, BucketCap]:
        for bid, (alias, cap) in self.sync.caps().items():
            if alias == name:
                return bid, cap
        raise NotFoundError(f"no bucket {name!r} here: `peercloud bucket ls` lists them")

    def _writable(self, name: str) -> tuple[bytes, BucketCap]:
        bid, cap = self._find(name)
        if not cap.writable:
            raise RefusedError(f"bucket {name!r} was shared with this node read-only")
        return bid, cap

    def describe(self, bucket_id: bytes, name: str, cap: BucketCap) -> dict[str, Any]:
        """A bucket as `bucket ls` shows it."""
        keys, size = self.index.count_keys(bucket_id)
        return {
            "name": name,
            "bucket_id": bucket_id.hex(),
            "epoch": cap.epoch,
            "access": "write" if cap.writable else "read",
            "class": cap.storage_class,
            "keys": keys,
            "bytes": size,
        }

    def list_buckets(self) -> list[dict[str, Any]]:
        """Every bucket this node reads or writes."""
        return [self.describe(bid, name, cap) for bid, (name, cap) in self.sync.caps().items()]

    def create(self, name: str, class_name: str | None) -> dict[str, Any]:
        """A new, empty bucket under a class of the cloud (its index and its objects)."""
        doc = self.service.membership.doc
        if doc is None:
            raise RefusedError("buckets live in a cloud: create or join one first (`peercloud cloud create`)")
        check_name(name)
        if any(alias == name for alias, _ in self.sync.caps().values()):
            raise RefusedError(f"a bucket named {name!r} exists here already")
        class_name = class_name or self.service.node.config.default_class
        if class_name not in doc.class_map:
            raise UsageError(f"no class {class_name!r} in this cloud (`peercloud class ls`)")
        cap = BucketCap.new(class_name)
        self.index.save_bucket(cap.bucket_id, name, str(cap), time.time(), owner=cap.owner_pair)
        return self.describe(cap.bucket_id, name, cap)

    def share(self, name: str, write: bool) -> str:
        """The cap to hand to another device (write) or member (read)."""
        _, cap = self._writable(name) if write else self._find(name)
        return str(cap if write else cap.reader())

    async def import_cap(self, text: str, name: str | None) -> dict[str, Any]:
        """Add a bucket someone shared (or a newer epoch, or write access, of one we know) and
        read what its writers wrote so far."""
        if self.service.membership.doc is None:
            raise RefusedError("buckets live in a cloud: join the cloud the bucket is in first")
        cap = BucketCap.parse(text)
        known = self.sync.caps().get(cap.bucket_id)
        if known is not None:
            alias, held = known
            if cap.epoch < held.epoch or (cap.epoch == held.epoch and (held.writable or not cap.writable)):
                return self.describe(cap.bucket_id, alias, held)  # nothing newer than what we hold
            name = name or alias
        name = check_name(name or f"bucket-{cap.bucket_id.hex()[:8]}")
        if any(alias == name and bid != cap.bucket_id for bid, (alias, _) in self.sync.caps().items()):
            raise RefusedError(f"a bucket named {name!r} exists here already: give another with --as")
        newer_epoch = known is not None and cap.epoch > known[1].epoch
        self.index.save_bucket(cap.bucket_id, name, str(cap), time.time(), reset=newer_epoch, owner=cap.owner_pair)
        self.sync.read_soon(cap.bucket_id)
        async with asyncio.timeout(IMPORT_WAIT):
            await self.sync.caught_up(cap.bucket_id)
        return self.describe(cap.bucket_id, name, cap)

    async def unshare(self, name: str) -> dict[str, Any]:
        """New keys for the bucket: every cap handed out so far sees nothing written from now on.
        The current listing is written again under the new keys; devices and members that should
        keep access need a new `bucket share`."""
        bid, cap = self._writable(name)
        async with self.sync.lock(bid):
            new = BucketCap.new(cap.storage_class, bid, cap.epoch + 1)
            pair = new.owner_pair
            assert pair is not None
            entries = await asyncio.to_thread(self._reown, bid, pair[0])
            await asyncio.to_thread(self.index.rekey_bucket, bid, str(new), self.me, pair, entries)
        await self.sync.flush(bid)
        self.service.catalog.flush_soon()
        return self.describe(bid, name, new)

    def _reown(self, bucket_id: bytes, new_owner: bytes) -> list[OwnedEntry]:
        """Catalog entries that move the objects a bucket names from the owner keys this node
        holds to the new epoch's: a removed cap's owner key can then delete nothing of them."""
        doc = self.service.membership.doc
        if doc is None:
            return []
        keys, now, out = set(self.index.owner_seeds()), time.time(), []
        for oid in self.index.bucket_objects(bucket_id):
            for e in self.index.owned_entries(oid):
                if e.owner in keys and e.owner != new_owner and e.kind == catalog.PUT:
                    at = max(now, e.at + 0.001)
                    put = catalog.Op(catalog.PUT, oid, at, e.storage_class, e.total_blocks, e.k, e.n, e.size)
                    out.append(catalog.owned(put, new_owner, doc.class_map, self.me))
                    out.append(catalog.owned(catalog.Op(catalog.REMOVE, oid, at), e.owner, doc.class_map, self.me))
                    break
        return out

    async def remove_bucket(self, name: str, force: bool) -> dict[str, Any]:
        """Forget a bucket here; a writer's `--force` first removes every key (deleting what this
        node owns), and its own index batches go too."""
        bid, cap = self._find(name)
        keys, _ = self.index.count_keys(bid)
        if keys and not force:
            raise RefusedError(f"bucket {name!r} holds {keys} key(s): remove them first, or give --force")
        removed = 0
        if keys and cap.writable:
            removed = (await self.remove(name, "", recursive=True))["removed"]
            await self.sync.flush(bid)
        batches = self.index.forget_bucket(bid)
        if cap.writable:
            for oid in batches:
                await self._delete_owned(oid)
        return {"name": name, "bucket_id": bid.hex(), "keys_removed": removed, "forgotten": True}

    # -- keys

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
        self, bid: bytes, cap: BucketCap, path: Path, key: str, progress: Progress | None, meta: dict[str, str]
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
        self.sync.flush_soon(bid)
        if old is not None and not old.removed and old.object_id != result.manifest.object_id:
            await self._release({old.object_id})
        return result

    def _put_json(self, result: AddResult, bucket: str, key: str) -> dict[str, Any]:
        return {
            "object_id": result.manifest.object_id.hex(),
            "read_cap": str(result.read_cap),
            "verify_cap": str(result.read_cap.verify_cap),
            "name": result.name,
            "size": result.manifest.size,
            "class": result.storage_class,
            "new_bytes": result.new_bytes,
            "bucket": bucket,
            "key": key,
        }

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
        for path, key in zip(files, keys, strict=True):
            result = await self._put_file(bid, cap, path, key, progress, {})
            total += result.manifest.size
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
        written = 0
        for r in rows:
            dest = root / r.key[len(prefix) :]
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

    async def _release(self, objects: set[bytes]) -> set[bytes]:
        """Objects left without a name here: those this node owns are deleted ([4/6])."""
        deleted = set()
        for oid in objects:
            if not self.index.names_of(oid) and await self._delete_owned(oid):
                deleted.add(oid)
        return deleted

    async def _delete_owned(self, object_id: bytes) -> bool:
        keys = {self.me} | set(self.index.owner_seeds())
        owned = any(e.owner in keys and e.kind == catalog.PUT for e in self.index.owned_entries(object_id))
        if not owned or not self.index.catalog(object_id):
            return False
        try:
            await self.service.deletions.delete(object_id, own_only=True)
        except PeercloudError:
            return False
        return True

    def on_unnamed(self, objects: set[bytes]) -> None:
        """Another writer's removal left objects without a name: ours among them are deleted."""
        asyncio.get_running_loop().create_task(self._release(objects))

    def owner_keys(self) -> dict[bytes, Identity]:
        """The owner keys of the buckets this node wrote to (every epoch's), to sign for."""
        return {
            pub: Identity(Ed25519PrivateKey.from_private_bytes(seed)) for pub, seed in self.index.owner_seeds().items()
        }

    def check_unnamed(self, object_id: bytes) -> None:
        """`rm OBJ` is refused while a bucket this node reads names the object."""
        names = self.index.names_of(object_id)
        if names:
            caps = self.sync.caps()
            shown = ", ".join(f"{caps[b][0]}/{k}" for b, k in names[:3] if b in caps)
            raise RefusedError(
                f"object {object_id.hex()[:12]} is named by {len(names)} key(s) ({shown}): "
                "remove the names (`peercloud rm BUCKET/KEY`), or give --force"
            )
