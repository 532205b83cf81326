"""The REST API's bucket routes: buckets, and keys as BUCKET/KEY strings in bodies and queries
(a key may hold any character a URL path would have to escape)."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response

from peercloud.api.models import BucketCreateRequest, BucketImportRequest, KeyGetRequest, MoveRequest, PutRequest
from peercloud.node.bucketkeys import split_path
from peercloud.node.service import NodeService

Stream = Callable[[Callable[[Callable[[int], None]], Awaitable[dict[str, Any]]], int | None], Awaitable[Response]]


def _size(path: Path) -> int | None:
    """Bytes a put will read (a file, or every file of a folder), for the progress bar."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def add_routes(api: APIRouter, service: NodeService, stream: Stream) -> None:
    """Register the bucket routes on the API."""
    buckets = service.buckets

    @api.get("/v1/buckets")
    async def bucket_list() -> list[dict[str, Any]]:
        """Buckets this node reads or writes, with their keys and bytes."""
        return await asyncio.to_thread(buckets.list_buckets)

    @api.post("/v1/buckets")
    async def bucket_create(req: BucketCreateRequest) -> dict[str, Any]:
        """Create an empty bucket in the cloud."""
        return buckets.create(req.name, req.storage_class)

    @api.post("/v1/buckets/import")
    async def bucket_import(req: BucketImportRequest) -> dict[str, Any]:
        """Add a bucket from a cap and read what its writers wrote so far."""
        return await buckets.import_cap(req.cap, req.name)

    @api.post("/v1/buckets/{name}/share")
    async def bucket_share(name: str, write: bool = False) -> dict[str, Any]:
        """The cap that gives another node read (or write) access."""
        return {"name": name, "access": "write" if write else "read", "cap": buckets.share(name, write)}

    @api.post("/v1/buckets/{name}/unshare")
    async def bucket_unshare(name: str) -> dict[str, Any]:
        """New keys: caps handed out so far see nothing new."""
        return await buckets.unshare(name)

    @api.delete("/v1/buckets/{name}")
    async def bucket_remove(name: str, force: bool = False) -> dict[str, Any]:
        """Forget a bucket (refused while it holds keys, unless `force` removes them)."""
        return await buckets.remove_bucket(name, force)

    @api.post("/v1/put")
    async def put(req: PutRequest) -> Response:
        """Put a file, a folder or an object under a key (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            return await buckets.put(req.source, req.target, progress, req.meta)

        return await stream(run, await asyncio.to_thread(_size, Path(req.source)))

    @api.get("/v1/keys")
    async def keys(target: str, recursive: bool = False, start: str = "", limit: int = 0) -> dict[str, Any]:
        """Keys of BUCKET[/PREFIX] (with common prefixes unless `recursive`), from `start`, up to `limit`."""
        return await asyncio.to_thread(buckets.ls, target, recursive, start, limit)

    @api.delete("/v1/keys")
    async def remove_keys(target: str, recursive: bool = False) -> dict[str, Any]:
        """Remove a key (or every key under a prefix): objects left without a name that this
        node owns are deleted."""
        name, key = split_path(target)
        return await buckets.remove(name, key, recursive)

    @api.post("/v1/keys/get")
    async def key_get(req: KeyGetRequest) -> Response:
        """Fetch a key (or every key under a prefix) to a file (or folder); streams progress."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            out = Path(req.output) if req.output else None
            return await buckets.get(req.target, out, Path(req.cwd or "."), progress)

        return await stream(run, None)

    @api.post("/v1/keys/move")
    async def move(req: MoveRequest) -> dict[str, Any]:
        """Rename a key; the object stays."""
        return await buckets.move(req.source, req.target)
