"""How the CLI reaches a running daemon: daemon.json in the node home, then HTTP with the token."""

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from peercloud.errors import (
    DaemonNeededError,
    IntegrityError,
    NotFoundError,
    PeercloudError,
    QuotaExceededError,
    RefusedError,
    UsageError,
)
from peercloud.node.home import NodeHome

_BY_CODE: dict[int, type[PeercloudError]] = {
    e.exit_code: e
    for e in (UsageError, NotFoundError, QuotaExceededError, IntegrityError, DaemonNeededError, RefusedError)
}
# when an error body carries no exit code (a proxy, an old daemon): the status says what kind it is
_BY_STATUS: dict[int, type[PeercloudError]] = {
    400: UsageError,
    403: RefusedError,
    404: NotFoundError,
    422: UsageError,
    507: QuotaExceededError,
}
Progress = Callable[[str, int], None]


def _error(code: Any, message: Any, status: int | None = None) -> PeercloudError:
    """The daemon's error as the exception the local command would raise (same class, same exit code)."""
    try:
        cls = _BY_CODE.get(int(code), PeercloudError)
    except (TypeError, ValueError):
        cls = _BY_STATUS.get(status or 0, PeercloudError)
    return cls(str(message))


def _http_error(e: urllib.error.HTTPError) -> PeercloudError:
    """An HTTP error status from the daemon, with its JSON body `{"error": ..., "exit_code": N}`."""
    try:
        body = json.loads(e.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = body.get("error") or body.get("detail") or f"HTTP {e.code} {e.reason}".rstrip()
    return _error(body.get("exit_code"), message, e.code)


class DaemonClient:
    """Talks to the daemon of one node home."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    @classmethod
    def find(cls, home: NodeHome) -> "DaemonClient | None":
        """The running daemon's client, or None when no daemon runs for this home."""
        try:
            state = json.loads(home.daemon_path.read_text())
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(f"http://{state['api']}", home.api_token())

    def _open(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(req, timeout=3600)
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except urllib.error.URLError as e:
            raise PeercloudError(f"cannot reach the daemon at {self.base}: {e.reason}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request, one JSON answer."""
        with self._open(method, path, body) as resp:
            return json.loads(resp.read())

    def stream(self, path: str, body: Any, progress: Progress | None) -> Any:
        """A long operation: progress lines, then the result (or the error, raised)."""
        with self._open("POST", path, body) as resp:
            for raw in resp:
                line = json.loads(raw)
                if "progress" in line:
                    if progress:
                        progress("advance", line["progress"])
                elif "total" in line:
                    if progress:
                        progress("total", line["total"])
                elif "result" in line:
                    return line["result"]
                else:  # the operation failed after it had started streaming
                    raise _error(line.get("exit_code", 1), line.get("error", "failed"))
        raise PeercloudError("the daemon ended the operation without an answer")
