"""The daemon's REST API over real HTTP: the token guards the docs too, and errors are real statuses."""

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercloud.content.caps import ReadCap
from peercloud.identity import PeerId

from .conftest import run_cli
from .daemons import Daemon

UNKNOWN_CAP = str(ReadCap(bytes(range(32)), bytes(32)))


class Api:
    def __init__(self, d: Daemon) -> None:
        self.base = f"http://{d.state['api']}"
        self.token = (d.home / "api.token").read_text().strip()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, auth: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; HTTP errors are answers too."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.fixture
def api(daemons: Callable[[str], Daemon]) -> Api:
    return Api(daemons("a"))


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_openapi_needs_the_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {api.token}"}):
        status, _, body = api.request("GET", "/openapi.json", headers=headers, auth=False)
        assert status == 401
        assert "api.token" in json.loads(body)["error"]
    status, _, body = api.request("GET", f"/openapi.json?token={api.token}", auth=False)
    assert status == 401  # the query token is for the browser page only
    status, headers, body = api.request("GET", "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    spec = json.loads(body)
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/objects", "/v1/peers", "/v1/get", "/v1/pin", "/v1/node"} <= set(spec["paths"])
    assert not {"/openapi.json", "/docs"} & set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_docs_need_the_token_and_load_only_local_assets(api: Api) -> None:
    for path in ("/docs", "/docs?token=wrong", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        status, _, _ = api.request("GET", path, auth=False)
        assert status == 401, path
    status, _, _ = api.request("GET", "/docs/assets/swagger-ui.css", auth=False, headers={"Cookie": "peercloud_docs=x"})
    assert status == 401

    status, headers, body = api.request("GET", f"/docs?token={api.token}", auth=False)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"]
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/docs"} <= attributes
    name_value = cookie.split(";")[0]
    assert name_value.split("=", 1)[1] == api.token
    page = body.decode()
    assert "SwaggerUIBundle" in page and '"/openapi.json"' in page
    assert not re.search(r"(https?:)?//", page), "the page must not load anything from another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets)
    for url in assets:
        assert url.startswith("/docs/"), url  # the cookie's path covers every asset
        status, _, content = api.request("GET", url, auth=False, headers={"Cookie": name_value})
        assert status == 200 and len(content) > 1000, url
        status, _, _ = api.request("GET", url)  # the Bearer header works as well
        assert status == 200
    status, _, js = api.request("GET", "/docs/assets/swagger-ui-bundle.js")
    assert b"openapi: 3.1.x" in js  # Swagger UI 5: it renders the 3.1 document FastAPI writes
    status, _, _ = api.request("GET", "/docs/assets/..%2Fapi.token", auth=False, headers={"Cookie": name_value})
    assert status == 404  # only the listed files are served
    status, headers, body = api.request("GET", "/docs")  # scripts may use the header instead
    assert status == 200 and api.token in body.decode()


def test_streaming_errors_before_any_progress_are_http_statuses(api: Api, tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    status, headers, body = api.request("POST", "/v1/objects", {"path": str(missing)})
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": f"no such file: {missing}", "exit_code": 3}

    status, _, body = api.request("POST", "/v1/get", {"cap": UNKNOWN_CAP, "cwd": str(tmp_path)})
    assert status == 400 and json.loads(body)["exit_code"] == 2  # no -o and no known name

    status, headers, body = api.request("POST", "/v1/get", {"cap": UNKNOWN_CAP, "output": "o", "cwd": str(tmp_path)})
    assert status == 404 and headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["exit_code"] == 3 and "unknown object" in error["error"]
    assert not (tmp_path / "o").exists()

    status, _, body = api.request("POST", "/v1/pin", {"cap": "pcr1_nonsense"})
    assert status == 400 and json.loads(body)["exit_code"] == 2

    status, _, body = api.request("POST", "/v1/objects", {"path": str(tmp_path)})  # a folder
    assert status == 400 and json.loads(body)["exit_code"] == 2


def test_other_routes_answer_with_proper_statuses(api: Api) -> None:
    status, _, body = api.request("POST", "/v1/get", {"output": "x"})  # no cap
    assert status == 422
    error = json.loads(body)
    assert error["exit_code"] == 2 and "cap" in error["error"] and error["detail"][0]["loc"] == ["body", "cap"]
    status, _, body = api.request("DELETE", f"/v1/peers/{PeerId(bytes(32))}")
    assert status == 404 and json.loads(body)["exit_code"] == 3
    status, _, body = api.request("DELETE", "/v1/peers/peer_n0nsense")  # 0 is no base32 digit
    assert status == 400 and json.loads(body)["exit_code"] == 2
    status, _, body = api.request("DELETE", "/v1/peers/peer_nonsense")  # could start a peer ID: none known
    assert status == 404 and json.loads(body)["exit_code"] == 3
    status, _, body = api.request("GET", "/v1/objects/0123")
    assert status == 404 and json.loads(body)["exit_code"] == 3
    status, _, body = api.request("GET", "/v1/nothing-here")
    assert status == 404 and json.loads(body)["exit_code"] == 3
    status, _, body = api.request("GET", "/v1/cloud")
    assert 400 <= status < 500 and "error" in json.loads(body)


def test_a_stream_that_starts_well_still_streams(api: Api, tmp_path: Path) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 300_000)
    status, headers, body = api.request("POST", "/v1/objects", {"path": str(src), "storage_class": "replica-1"})
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[0] == {"total": 300_000}
    assert sum(line.get("progress", 0) for line in lines) == 300_000
    assert lines[-1]["result"]["size"] == 300_000


def test_an_error_after_streaming_started_is_the_last_line(daemons: Callable[[str], Daemon], tmp_path: Path) -> None:
    home = tmp_path / "q"
    run_cli(home, "init", check=True)
    (home / "config.toml").write_text('[store]\nquota = "1MiB"\nsegment_size = "64KiB"\nworkers = 1\n')
    api = Api(daemons("q"))
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(4 * 1024 * 1024))
    status, _, body = api.request("POST", "/v1/objects", {"path": str(src), "storage_class": "replica-1"})
    assert status == 200  # progress was on the wire before the quota was reached
    lines = [json.loads(line) for line in body.splitlines()]
    assert any("progress" in line for line in lines)
    assert lines[-1]["exit_code"] == 4 and "quota" in lines[-1]["error"]
    proc = run_cli(home, "add", str(src), "--class", "replica-1")
    assert proc.returncode == 4
    assert "storage quota reached" in error_line(proc.stderr)


def test_cli_turns_api_errors_into_one_line_and_the_exit_code(daemons: Callable[[str], Daemon], tmp_path: Path) -> None:
    a = daemons("a")
    proc = a.cli("add", str(tmp_path / "missing.bin"), check=False)
    assert proc.returncode == 3
    assert error_line(proc.stderr) == f"error: no such file: {tmp_path / 'missing.bin'}"
    proc = a.cli("get", UNKNOWN_CAP, "-o", str(tmp_path / "out"), check=False)
    assert proc.returncode == 3
    assert "unknown object" in error_line(proc.stderr)
    assert not (tmp_path / "out").exists()
    proc = a.cli("pin", UNKNOWN_CAP[:-3], check=False)
    assert proc.returncode == 2
    error_line(proc.stderr)
    proc = a.cli("peers", "rm", str(PeerId(bytes(32))), check=False)
    assert proc.returncode == 3  # as without the daemon
    assert "is not a known peer" in error_line(proc.stderr)
