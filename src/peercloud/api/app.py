"""The daemon's REST API (FastAPI), on loopback, guarded by the token in the node home.

Every route needs `Authorization: Bearer <token>` (the token is `api.token` in the node home),
`/openapi.json` included. The Swagger UI page `/docs` also takes the token as `?token=…` so a
browser can open it: it answers with an HttpOnly, SameSite=Strict cookie limited to `/docs`
(which lets the browser fetch the page's scripts and styles, served from this process, never a
CDN) and hands the token to the page, which sends it as the Bearer header on its own calls.

Errors are HTTP statuses with a JSON body `{"error": "...", "exit_code": N}` (N is the CLI's
exit code; FastAPI's validation errors keep their `detail` too and answer 422).

Long operations (add, get, pin) answer with NDJSON: an optional `{"total": bytes}`, progress
lines `{"progress": bytes}` while they run (at most one per PROGRESS_EVERY, summing the bytes
since the last), then one `{"result": {...}}` line, so the CLI can
draw a progress bar for work the daemon does. Such a request waits for the work's first event
before it answers: a failure before any progress (a missing file, an unknown object, a bad cap)
is an HTTP error status like any other route's. A failure after progress lines were sent can
no longer change the status (200 is already on the wire), so it ends the stream with one
`{"error": "...", "exit_code": N}` line instead.
"""

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from peercloud import __version__
from peercloud.api import buckets, views
from peercloud.api.docs import docs_html
from peercloud.api.models import (
    AddRequest,
    ClassRequest,
    CloudCreateRequest,
    GetRequest,
    InviteRequest,
    JoinRequest,
    PeerRequest,
    PinRequest,
    ReclassRequest,
    RoleRequest,
    UnpinRequest,
)
from peercloud.cloud.classes import StorageClass, shortfall
from peercloud.cloud.document import ADMIN, MEMBER
from peercloud.errors import NotFoundError, PeercloudError, RefusedError, UsageError
from peercloud.identity import PeerId, resolve_peer
from peercloud.net.link import parse_peer
from peercloud.node.service import NodeService

log = logging.getLogger(__name__)

DOCS_COOKIE = "peercloud_docs"
PROGRESS_EVERY = 0.1  # seconds between progress lines of a long operation
# Swagger UI 5 (it reads OpenAPI 3.1, which FastAPI writes), as shipped by fastapi-offline.
_DOCS_ASSETS = resources.files("fastapi_offline") / "static"
_DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
_UNAUTHORIZED = "missing or wrong API token (see api.token in the node home)"
# Exit codes for the errors FastAPI raises itself: unknown route, malformed request
_HTTP_EXIT_CODES = {400: 2, 404: 3, 405: 2, 413: 2, 422: 2}


def _status_code(e: PeercloudError) -> int:
    return {2: 400, 3: 404, 4: 507, 5: 422, 7: 403}.get(e.exit_code, 500)


def _as_error(e: Exception) -> PeercloudError:
    """The user-facing error for a failure: an OSError names the file, a bug says it is one."""
    if isinstance(e, PeercloudError):
        return e
    if isinstance(e, OSError):
        message = f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
        return NotFoundError(message) if isinstance(e, FileNotFoundError) else PeercloudError(message)
    return PeercloudError(f"internal error ({type(e).__name__}: {e}); see the daemon's log")


def _error_body(e: PeercloudError) -> dict[str, Any]:
    return {"error": str(e), "exit_code": e.exit_code}


def _file_size(path: Path) -> int | None:
    """The total for the progress bar; None when unknown (the add itself then says what is wrong)."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def create_app(service: NodeService, token: str) -> FastAPI:
    """Build the API around a running NodeService."""
    secret = token.encode()
    bearer = HTTPBearer(auto_error=False, description="The token in `api.token` in the node home.")

    def matches(candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(candidate.encode(), secret)

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or not matches(credentials.credentials):
            raise HTTPException(401, _UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    def docs_authorized(request: Request, query: bool = False) -> None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if not (
            (scheme.lower() == "bearer" and matches(value))
            or matches(request.cookies.get(DOCS_COOKIE))
            or (query and matches(request.query_params.get("token")))
        ):
            detail = f"{_UNAUTHORIZED}; in a browser, open /docs?token=<token>"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(
        title="peercloud node API",
        version=__version__,
        openapi_url=None,  # served below, behind the token
        docs_url=None,
        redoc_url=None,
        description=(
            "Local control API of one peercloud node. Every call needs `Authorization: Bearer <token>` "
            "(the token is `api.token` in the node home). Errors answer with an HTTP status and "
            '`{"error": "...", "exit_code": N}`, N being the CLI\'s exit code.'
        ),
    )
    api = APIRouter(dependencies=[Depends(authorized)])
    running: set[asyncio.Task[None]] = set()  # streamed work, referenced until it ends

    @app.exception_handler(PeercloudError)
    async def _error(_: Request, e: PeercloudError) -> JSONResponse:
        return JSONResponse(_error_body(e), status_code=_status_code(e))

    @app.exception_handler(OSError)
    async def _os_error(request: Request, e: OSError) -> JSONResponse:
        return await _error(request, _as_error(e))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:  # logged by uvicorn too
        return await _error(request, _as_error(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(e.detail), "exit_code": _HTTP_EXIT_CODES.get(e.status_code, 1), "detail": e.detail}
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg', 'invalid')}"
            for err in e.errors()
        )
        body = {"error": f"invalid request: {problems}", "exit_code": 2, "detail": jsonable_encoder(e.errors())}
        return JSONResponse(body, status_code=422)

    async def stream(
        run: Callable[[Callable[[int], None]], Awaitable[dict[str, Any]]], total: int | None = None
    ) -> Response:
        """Start `run`; fail with a status if it fails before its first event, else stream NDJSON."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | PeercloudError] = asyncio.Queue()

        held = [0, 0]  # progress not sent yet, and whether a send is due (a line per PROGRESS_EVERY)
        lock = threading.Lock()

        def progress(n: int) -> None:  # called from worker threads too, once per block
            with lock:
                held[0] += n
                if held[1]:
                    return
                held[1] = 1
            loop.call_soon_threadsafe(loop.call_later, PROGRESS_EVERY, send)

        def send() -> None:
            with lock:
                n, held[:] = held[0], [0, 0]
            if n:
                queue.put_nowait({"progress": n})

        async def worker() -> None:
            item: dict[str, Any] | PeercloudError
            try:
                item = {"result": await run(progress)}
            except Exception as e:
                if not isinstance(e, PeercloudError | OSError):
                    log.exception("%s failed", run.__qualname__)
                item = _as_error(e)
            send()  # progress held back goes before the result
            # through the loop's queue of callbacks, so it comes after every progress line
            loop.call_soon_threadsafe(queue.put_nowait, item)

        task = loop.create_task(worker())
        running.add(task)
        task.add_done_callback(running.discard)
        try:
            first = await queue.get()
        except BaseException:
            task.cancel()
            raise
        if isinstance(first, PeercloudError):
            return JSONResponse(_error_body(first), status_code=_status_code(first))

        async def lines() -> AsyncIterator[bytes]:
            try:
                if total is not None:
                    yield (json.dumps({"total": total}) + "\n").encode()
                item: dict[str, Any] | PeercloudError = first
                while True:
                    if isinstance(item, PeercloudError):
                        yield (json.dumps(_error_body(item)) + "\n").encode()
                        break
                    yield (json.dumps(item) + "\n").encode()
                    if "result" in item:
                        break
                    item = await queue.get()
            finally:
                if not task.done():
                    task.cancel()  # the client went away

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The OpenAPI document, behind the token like everything else."""
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """Swagger UI; a browser opens /docs?token=… and keeps the token in a cookie for the assets."""
        docs_authorized(request, query=True)
        page = HTMLResponse(
            docs_html(app.title, token),
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"},
        )
        page.set_cookie(DOCS_COOKIE, token, path="/docs", httponly=True, samesite="strict")
        return page

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(request: Request, name: str) -> Response:
        """Swagger UI's script, style and icon, from the installed package (no CDN)."""
        docs_authorized(request)
        if name not in _DOCS_FILES:
            raise NotFoundError(f"no docs asset {name!r}")
        content = await asyncio.to_thread((_DOCS_ASSETS / name).read_bytes)
        return Response(content, media_type=_DOCS_FILES[name], headers={"Cache-Control": "private, max-age=3600"})

    @api.get("/v1/node")
    async def node_status() -> dict[str, Any]:
        """Uptime, listen addresses, peers and traffic."""
        return views.node_status(service.node_status())

    @api.get("/v1/objects")
    async def list_objects() -> list[dict[str, Any]]:
        """Objects known here."""
        rows = [views.object_row(r) for r in service.node.objects()]
        named = service.buckets.name_map()  # a bucket's name, where this node reads one
        for row in rows:
            row["name"] = named.get(bytes.fromhex(row["object_id"]), row["name"])
        return rows

    @api.post("/v1/objects")
    async def add(req: AddRequest) -> Response:
        """Add a file (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            result = await service.add(Path(req.path), req.storage_class, req.convergent, progress)
            return views.add_result(result)

        return await stream(run, _file_size(Path(req.path)))

    @api.get("/v1/objects/{ref}")
    async def info(ref: str) -> dict[str, Any]:
        """Manifest summary."""
        return views.info(service.node.info(ref))

    @api.get("/v1/objects/{ref}/status")
    async def status(ref: str) -> dict[str, Any]:
        """Who holds which blocks of the object, and its health against its class; for an object
        this node deleted, the deletion report."""
        report = service.deletion(ref)
        if report is not None:
            return {"object_id": report.object_id.hex(), "health": "deleted", "deletion": report.as_json()}
        found = views.object_status(*await service.status(ref))
        names = service.buckets.names_for(bytes.fromhex(found["object_id"]))
        found["names"] = names
        found["name"] = names[0] if names else found["name"]
        return found

    @api.post("/v1/objects/{ref}/class")
    async def reclass(ref: str, req: ReclassRequest) -> dict[str, Any]:
        """Put an object this node owns under another class (re-placed, or made anew across codings)."""
        return (await service.reclass(ref, req.cls)).as_json()

    @api.delete("/v1/objects/{ref}")
    async def delete(ref: str, force: bool = False) -> dict[str, Any]:
        """Delete an object of the cloud (as an owner or an admin): the deletion report. Refused
        while a bucket this node reads names it, unless `force`."""
        return (await service.delete(ref, force)).as_json()

    @api.get("/v1/status")
    async def summary() -> dict[str, Any]:
        """Every object known here with its health."""
        found = views.summary(service.summary())
        named = service.buckets.name_map()
        for row in found["objects"]:
            row["name"] = named.get(bytes.fromhex(row["object_id"]), row["name"])
        return found

    @api.post("/v1/unpin")
    async def unpin(req: UnpinRequest) -> dict[str, Any]:
        """Drop this node's copy unless the class minimum needs it."""
        return views.object_status(await service.holding.unpin(req.cap), None)

    def cloud_view() -> dict[str, Any]:
        doc = service.membership.require()
        used = service.reconciler.used()
        return views.cloud(doc, service.node.identity.peer_id, set(service.peers.links), used)

    @api.get("/v1/cloud")
    async def cloud() -> dict[str, Any]:
        """The cloud document: members (online, offer, used, tags) and classes."""
        return cloud_view()

    @api.post("/v1/cloud")
    async def cloud_create(req: CloudCreateRequest) -> dict[str, Any]:
        """Found a cloud with this node as admin."""
        service.membership.create(req.name, req.offer, req.tags)
        return {**cloud_view(), **bring(req.bring)}

    def bring(yes: bool) -> dict[str, Any]:
        if yes:
            return service.bring()
        return {"brought": [], "skipped": [], "local_only": len(service.node.index.local_only())}

    @api.post("/v1/cloud/bring")
    async def cloud_bring() -> dict[str, Any]:
        """Offer the objects this node added outside the cloud to it."""
        service.membership.require()
        return service.bring()

    @api.post("/v1/cloud/invite")
    async def cloud_invite(req: InviteRequest) -> dict[str, Any]:
        """A one-time invite token (admins only)."""
        invite = service.membership.invite(req.expires)
        return {"token": str(invite), "expires": invite.expires, "cloud_id": service.membership.require().text_id}

    @api.post("/v1/cloud/join")
    async def cloud_join(req: JoinRequest) -> dict[str, Any]:
        """Join a cloud with an invite token."""
        await service.membership.join(req.token, req.offer, req.tags)
        return {**cloud_view(), **bring(req.bring)}

    @api.post("/v1/cloud/leave")
    async def cloud_leave() -> dict[str, Any]:
        """Leave the cloud."""
        name = service.membership.require().name
        await service.membership.leave()
        return {"left": name}

    @api.post("/v1/cloud/members/{peer}/role")
    async def cloud_role(peer: str, req: RoleRequest) -> dict[str, Any]:
        """Promote a member to admin or demote an admin (admins only)."""
        if req.role not in (ADMIN, MEMBER):
            raise UsageError(f"a role is {ADMIN!r} or {MEMBER!r}")
        members = [m.peer_id for m in service.membership.require().members]
        service.membership.set_role(resolve_peer(peer, members), req.role)
        return cloud_view()

    @api.delete("/v1/cloud/members/{peer}")
    async def cloud_remove(peer: str) -> dict[str, Any]:
        """Remove a member (admins only)."""
        members = [m.peer_id for m in service.membership.require().members]
        service.membership.remove(resolve_peer(peer, members))
        return cloud_view()

    @api.get("/v1/classes")
    async def classes() -> list[dict[str, Any]]:
        """Storage classes in force (the cloud's, or the defaults)."""
        return [views.storage_class(c) for c in service.membership.classes.values()]

    @api.post("/v1/classes")
    async def class_add(req: ClassRequest) -> list[dict[str, Any]]:
        """Add a class to the cloud document (admins only)."""
        new = StorageClass(req.name, req.replicas, req.k, req.m, req.max, req.spread, req.grace)
        doc = service.membership.require_admin()
        old = doc.class_map.get(new.name)
        if old is not None and old.coding != new.coding and service.node.index.catalog_uses(new.name):
            raise RefusedError(
                f"class {new.name!r} is in use and its objects are coded {old.coding.k}-of-{old.coding.n}: a"
                " redefinition keeps the coding (use `reclass` to move objects to a class of another coding)"
            )
        problem = shortfall(new, list(doc.members))
        if problem and not req.force:
            raise RefusedError(f"{problem}: add --force to define it anyway (its objects stay degraded until then)")
        # A redefinition replaces the class in place: its objects are re-placed under it.
        service.membership.set_classes([new if c.name == new.name else c for c in doc.classes] + ([] if old else [new]))
        return await classes()

    @api.delete("/v1/classes/{name}")
    async def class_rm(name: str) -> list[dict[str, Any]]:
        """Remove a class no object uses (admins only)."""
        doc = service.membership.require_admin()
        if name not in doc.class_map:
            raise NotFoundError(f"no class {name!r} in this cloud")
        users = service.node.index.catalog_uses(name)
        if users:
            raise RefusedError(f"class {name!r} is used by {users} object(s); it cannot be removed")
        service.membership.set_classes(c for c in doc.classes if c.name != name)
        return await classes()

    @api.post("/v1/get")
    async def get(req: GetRequest) -> Response:
        """Fetch and decrypt an object to a file (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            cwd = Path(req.cwd or ".")
            out = cwd / req.output if req.output else service.node.default_output(req.cap, cwd, req.force)
            path, manifest = await service.get(req.cap, out, progress)
            return {"object_id": manifest.object_id.hex(), "path": str(path), "size": manifest.size}

        return await stream(run)

    @api.post("/v1/pin")
    async def pin(req: PinRequest) -> Response:
        """Fetch and keep all blocks (streams progress)."""

        async def run(progress: Callable[[int], None]) -> dict[str, Any]:
            manifest = await service.pin(req.cap, progress)
            return {"object_id": manifest.object_id.hex(), "size": manifest.size, "blocks": len(manifest.blocks())}

        return await stream(run)

    @api.get("/v1/peers")
    async def peers() -> list[dict[str, Any]]:
        """Known and connected peers."""
        return views.peers(service.peers.info(), service.node.index)

    @api.post("/v1/peers")
    async def add_peer(req: PeerRequest) -> dict[str, Any]:
        """Remember a peer and connect to it."""
        peer_id, address = parse_peer(req.peer)
        service.peers.add(peer_id, address)
        return {"peer_id": str(peer_id), "address": str(address)}

    @api.delete("/v1/peers/{peer}")
    async def remove_peer(peer: str) -> dict[str, Any]:
        """Forget a peer."""
        known = [PeerId(raw) for raw, _ in service.node.index.peers()] + list(service.peers.links)
        peer_id = resolve_peer(peer, known)
        if not service.peers.remove(peer_id):
            raise NotFoundError(f"{peer_id} is not a known peer")
        return {"removed": str(peer_id)}

    @api.post("/v1/fsck")
    async def fsck() -> dict[str, Any]:
        """Verify every stored block."""
        report = await asyncio.to_thread(service.node.fsck)
        return views.fsck(report, service.node.objects())

    buckets.add_routes(api, service, stream)
    app.include_router(api)
    return app
