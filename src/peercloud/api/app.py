"""The daemon's REST API (FastAPI), on loopback, guarded by the token in the node home.

Long operations (add, get, pin) answer with NDJSON: progress lines `{"progress": bytes}` while
they run, then one `{"result": {...}}` or `{"error": "...", "exit_code": N}` line, so the CLI
can draw a progress bar for work the daemon does.
"""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from peercloud import __version__
from peercloud.api import views
from peercloud.cloud.classes import DEFAULT_GRACE, StorageClass
from peercloud.errors import NotFoundError, PeercloudError, RefusedError, UsageError
from peercloud.identity import PeerId
from peercloud.node.service import NodeService
from peercloud.swarm.peers import parse_peer


class AddRequest(BaseModel):
    """Add the file at `path` (on the daemon's machine)."""

    path: str
    storage_class: str | None = None
    convergent: bool = False


class GetRequest(BaseModel):
    """Fetch `cap` and write it to `output` (None: its known name in `cwd`)."""

    cap: str
    output: str | None = None
    cwd: str | None = None


class PinRequest(BaseModel):
    """Fetch and keep every block of the object named by `cap`."""

    cap: str


class PeerRequest(BaseModel):
    """PEERID@HOST:PORT."""

    peer: str


class UnpinRequest(BaseModel):
    """Drop this node's copy of the object named by `cap`."""

    cap: str


class CloudCreateRequest(BaseModel):
    """Found a cloud named `name`; this node offers `offer` bytes with `tags` (KEY=VALUE)."""

    name: str
    offer: int
    tags: list[str] = []


class InviteRequest(BaseModel):
    """Issue a one-time invite, valid for `expires` seconds (None: until used)."""

    expires: float | None = None


class JoinRequest(BaseModel):
    """Join with an invite token, offering `offer` bytes with `tags`."""

    token: str
    offer: int
    tags: list[str] = []


class ClassRequest(BaseModel):
    """A storage class: `replicas` (with `max`) or an erasure code `k`+`m`."""

    name: str
    replicas: int = 0
    max: int = 0
    k: int = 0
    m: int = 0
    spread: str = ""
    grace: float = DEFAULT_GRACE


def _status_code(e: PeercloudError) -> int:
    return {2: 400, 3: 404, 4: 507, 5: 422, 7: 403}.get(e.exit_code, 500)


def create_app(service: NodeService, token: str) -> FastAPI:
    """Build the API around a running NodeService."""

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization is None or not secrets.compare_digest(authorization, f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong API token (see api.token in the node home)")

    app = FastAPI(
        title="peercloud node API",
        version=__version__,
        dependencies=[Depends(authorized)],
        description="Local control API of one peercloud node. Every call needs `Authorization: Bearer <token>`.",
    )

    @app.exception_handler(PeercloudError)
    async def _error(_: Request, e: PeercloudError) -> JSONResponse:
        return JSONResponse({"error": str(e), "exit_code": e.exit_code}, status_code=_status_code(e))

    def stream(
        run: Callable[[Callable[[int], None]], Awaitable[dict[str, Any]]], total: int | None
    ) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if total is not None:
            queue.put_nowait({"total": total})

        def progress(n: int) -> None:  # called from worker threads too
            loop.call_soon_threadsafe(queue.put_nowait, {"progress": n})

        async def worker() -> None:
            try:
                result = await run(progress)
                line: dict[str, Any] = {"result": result}
            except PeercloudError as e:
                line = {"error": str(e), "exit_code": e.exit_code}
            except OSError as e:
                line = {"error": f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), "exit_code": 1}
            loop.call_soon_threadsafe(queue.put_nowait, line)

        async def lines() -> AsyncIterator[bytes]:
            task = loop.create_task(worker())
            try:
                while True:
                    item = await queue.get()
                    yield (json.dumps(item) + "\n").encode()
                    if "result" in item or "error" in item:
                        break
            finally:
                if not task.done():
                    task.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/v1/node")
    async def node_status() -> dict[str, Any]:
        """Uptime, listen addresses, peers and traffic."""
        return views.node_status(service.node_status())

    @app.get("/v1/objects")
    async def list_objects() -> list[dict[str, Any]]:
        """Objects known here."""
        return [views.object_row(r) for r in service.node.objects()]

    @app.post("/v1/objects")
    async def add(req: AddRequest) -> StreamingResponse:
        """Add a file (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            result = await service.add(Path(req.path), req.storage_class, req.convergent, progress)
            return views.add_result(result)

        path = Path(req.path)
        return stream(run, path.stat().st_size if path.is_file() else None)

    @app.get("/v1/objects/{ref}")
    async def info(ref: str) -> dict[str, Any]:
        """Manifest summary."""
        return views.info(service.node.info(ref))

    @app.get("/v1/objects/{ref}/status")
    async def status(ref: str) -> dict[str, Any]:
        """Who holds which blocks of the object, and its health against its class."""
        return views.object_status(*service.status(ref))

    @app.get("/v1/status")
    async def summary() -> dict[str, Any]:
        """Every object known here with its health."""
        return views.summary(service.summary())

    @app.post("/v1/unpin")
    async def unpin(req: UnpinRequest) -> dict[str, Any]:
        """Drop this node's copy unless the class minimum needs it."""
        return views.object_status(await service.unpin(req.cap), None)

    def cloud_view() -> dict[str, Any]:
        doc = service.membership.require()
        used = service.reconciler.used(service.node.index.catalog())
        return views.cloud(doc, service.node.identity.peer_id, set(service.peers.links), used)

    @app.get("/v1/cloud")
    async def cloud() -> dict[str, Any]:
        """The cloud document: members (online, offer, used, tags) and classes."""
        return cloud_view()

    @app.post("/v1/cloud")
    async def cloud_create(req: CloudCreateRequest) -> dict[str, Any]:
        """Found a cloud with this node as admin."""
        service.membership.create(req.name, req.offer, req.tags)
        return cloud_view()

    @app.post("/v1/cloud/invite")
    async def cloud_invite(req: InviteRequest) -> dict[str, Any]:
        """A one-time invite token (admins only)."""
        invite = service.membership.invite(req.expires)
        return {"token": str(invite), "expires": invite.expires, "cloud_id": service.membership.require().text_id}

    @app.post("/v1/cloud/join")
    async def cloud_join(req: JoinRequest) -> dict[str, Any]:
        """Join a cloud with an invite token."""
        await service.membership.join(req.token, req.offer, req.tags)
        return cloud_view()

    @app.post("/v1/cloud/leave")
    async def cloud_leave() -> dict[str, Any]:
        """Leave the cloud."""
        name = service.membership.require().name
        await service.membership.leave()
        return {"left": name}

    @app.delete("/v1/cloud/members/{peer}")
    async def cloud_remove(peer: str) -> dict[str, Any]:
        """Remove a member (admins only)."""
        service.membership.remove(PeerId.parse(peer))
        return cloud_view()

    @app.get("/v1/classes")
    async def classes() -> list[dict[str, Any]]:
        """Storage classes in force (the cloud's, or the defaults)."""
        return [views.storage_class(c) for c in service.membership.classes.values()]

    @app.post("/v1/classes")
    async def class_add(req: ClassRequest) -> list[dict[str, Any]]:
        """Add a class to the cloud document (admins only)."""
        new = StorageClass(req.name, req.replicas, req.k, req.m, req.max, req.spread, req.grace)
        doc = service.membership.require_admin()
        if new.name in doc.class_map:
            raise UsageError(f"class {new.name!r} exists; remove it first to redefine it")
        service.membership.set_classes([*doc.classes, new])
        return await classes()

    @app.delete("/v1/classes/{name}")
    async def class_rm(name: str) -> list[dict[str, Any]]:
        """Remove a class no object uses (admins only)."""
        doc = service.membership.require_admin()
        if name not in doc.class_map:
            raise NotFoundError(f"no class {name!r} in this cloud")
        users = sum(1 for e in service.node.index.catalog() if e.storage_class == name)
        if users:
            raise RefusedError(f"class {name!r} is used by {users} object(s); it cannot be removed")
        service.membership.set_classes(c for c in doc.classes if c.name != name)
        return await classes()

    @app.post("/v1/get")
    async def get(req: GetRequest) -> StreamingResponse:
        """Fetch and decrypt an object to a file (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            out = Path(req.cwd or ".") / (req.output or service.node.default_output(req.cap))
            path, manifest = await service.get(req.cap, out, progress)
            return {"object_id": manifest.object_id.hex(), "path": str(path), "size": manifest.size}

        return stream(run, None)

    @app.post("/v1/pin")
    async def pin(req: PinRequest) -> StreamingResponse:
        """Fetch and keep all blocks (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            manifest = await service.pin(req.cap, progress)
            return {"object_id": manifest.object_id.hex(), "size": manifest.size, "blocks": len(manifest.blocks())}

        return stream(run, None)

    @app.get("/v1/peers")
    async def peers() -> list[dict[str, Any]]:
        """Known and connected peers."""
        return views.peers(service.peers.info(), service.node.index)

    @app.post("/v1/peers")
    async def add_peer(req: PeerRequest) -> dict[str, Any]:
        """Remember a peer and connect to it."""
        peer_id, address = parse_peer(req.peer)
        service.peers.add(peer_id, address)
        return {"peer_id": str(peer_id), "address": str(address)}

    @app.delete("/v1/peers/{peer}")
    async def remove_peer(peer: str) -> dict[str, Any]:
        """Forget a peer."""
        peer_id = PeerId.parse(peer)
        if not service.peers.remove(peer_id):
            raise HTTPException(404, f"{peer_id} is not a known peer")
        return {"removed": str(peer_id)}

    @app.post("/v1/fsck")
    async def fsck() -> dict[str, Any]:
        """Verify every stored block."""
        report = await asyncio.to_thread(service.node.fsck)
        return views.fsck(report, service.node.objects())

    return app
