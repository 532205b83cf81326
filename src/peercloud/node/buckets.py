"""Buckets as users see them: create, share, import, unshare and remove them (their keys:
`node/bucketkeys.py`). A bucket's objects are owned in the catalog by its owner key, which every
device that writes to it holds, so any of them deletes what another put.
"""

import asyncio
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peercloud.cloud import catalog
from peercloud.errors import NotFoundError, PeercloudError, RefusedError, UsageError
from peercloud.identity import Identity
from peercloud.names.caps import BucketCap, check_name
from peercloud.node.bucketkeys import Keys, Service
from peercloud.node.bucketsync import BucketSync
from peercloud.store.index import OwnedEntry

IMPORT_WAIT = 120.0  # seconds `bucket import` waits to read what the writers wrote so far


class Buckets(Keys):
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
        if known is not None and (
            cap.epoch < known[1].epoch or (cap.epoch == known[1].epoch and (known[1].writable or not cap.writable))
        ):
            name, cap = known  # nothing newer than what we hold: read on from where we are
        else:
            name = check_name(name or (known[0] if known else f"bucket-{cap.bucket_id.hex()[:8]}"))
            if any(alias == name and bid != cap.bucket_id for bid, (alias, _) in self.sync.caps().items()):
                raise RefusedError(f"a bucket named {name!r} exists here already: give another with --as")
            newer = known is not None and cap.epoch > known[1].epoch
            self.index.save_bucket(cap.bucket_id, name, str(cap), time.time(), reset=newer, owner=cap.owner_pair)
        self.sync.read_soon(cap.bucket_id)
        try:
            async with asyncio.timeout(IMPORT_WAIT):
                await self.sync.caught_up(cap.bucket_id)
        except TimeoutError:  # a long log: the catch-up goes on; say so rather than fail
            return {**self.describe(cap.bucket_id, name, cap), "caught_up": False}
        return {**self.describe(cap.bucket_id, name, cap), "caught_up": True}

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

    async def _release(self, objects: set[bytes]) -> set[bytes]:
        """Objects left without a name here: those this node owns are deleted ([4/6])."""
        deleted = set()
        for oid in objects:
            if not self.index.names_of(oid) and await self._delete_owned(oid):
                deleted.add(oid)
        return deleted

    async def _delete_owned(self, object_id: bytes) -> bool:
        # Only what a bucket's owner key owns: a writer that names and then displaces one of this
        # node's own objects (never put in a bucket) must not get it deleted.
        keys = set(self.index.owner_seeds())
        owned = any(e.owner in keys and e.kind == catalog.PUT for e in self.index.owned_entries(object_id))
        if not owned or not self.index.catalog(object_id):
            return False
        try:
            await self.service.deletions.delete(object_id, own_only=True)
        except PeercloudError:
            return False
        return True

    def on_orphans(self, objects: list[bytes]) -> None:
        """Batch objects of ours a crash left without a head: deleted, then forgotten."""

        async def drop() -> None:
            for oid in objects:
                if await self._delete_owned(oid) or not self.index.catalog(oid):
                    await asyncio.to_thread(self.index.drop_batch, oid)

        asyncio.get_running_loop().create_task(drop())

    def on_unnamed(self, objects: set[bytes]) -> None:
        """Another writer's removal left objects without a name: ours among them are deleted."""
        asyncio.get_running_loop().create_task(self._release(objects))

    def names_for(self, object_id: bytes) -> list[str]:
        """Every BUCKET/KEY naming an object in the buckets this node reads."""
        caps = self.sync.caps()
        return sorted(f"{caps[b][0]}/{k}" for b, k in self.index.names_of(object_id) if b in caps)

    def name_map(self) -> dict[bytes, str]:
        """One BUCKET/KEY of every named object, for listings."""
        caps = self.sync.caps()
        return {oid: f"{caps[b][0]}/{k}" for oid, (b, k) in self.index.named_objects().items() if b in caps}

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
