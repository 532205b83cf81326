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
Progress = Callable[[str, int], None]


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
            try:
                detail = json.loads(e.read())
            except ValueError:
                detail = {}
            message = detail.get("error") or detail.get("detail") or f"HTTP {e.code}"
            raise _BY_CODE.get(int(detail.get("exit_code", 1)), PeercloudError)(str(message)) from None
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
                else:
                    raise _BY_CODE.get(int(line.get("exit_code", 1)), PeercloudError)(line.get("error", "failed"))
        raise PeercloudError("the daemon ended the operation without an answer")
