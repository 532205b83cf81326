"""The CLI's two ways of working: through the running daemon, or directly on the node home.

Both return the same JSON-shaped dicts (api/views.py), so every command renders one way.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from peercloud.cli.client import DaemonClient
from peercloud.node.home import NodeHome

Progress = Callable[[str, int], None]
NEEDS_DAEMON = "this needs the network: start the daemon with `peercloud up` (in another terminal), then retry"


class Backend(Protocol):
    """What commands can ask of a node."""

    def close(self) -> None:
        """Release what the backend holds."""
        ...

    def node_status(self) -> dict[str, Any]:
        """Daemon uptime, addresses, peers, traffic."""
        ...

    def objects(self) -> list[dict[str, Any]]:
        """Objects known to the node."""
        ...

    def add(self, path: Path, cls: str | None, convergent: bool, progress: Progress | None) -> dict[str, Any]:
        """Add a file."""
        ...

    def info(self, ref: str) -> dict[str, Any]:
        """Manifest summary."""
        ...

    def status(self, ref: str) -> dict[str, Any]:
        """Holders and redundancy of an object."""
        ...

    def summary(self) -> dict[str, Any]:
        """Health of every object."""
        ...

    def unpin(self, cap: str) -> dict[str, Any]:
        """Drop this node's copy unless the class minimum needs it."""
        ...

    def delete(self, ref: str, force: bool = False) -> dict[str, Any]:
        """Delete an object of the cloud: the deletion report."""
        ...

    def reclass(self, ref: str, class_name: str) -> dict[str, Any]:
        """Put an object under another class."""
        ...

    def get(self, cap: str, output: Path | None, progress: Progress | None, force: bool) -> dict[str, Any]:
        """Fetch, verify, decrypt to a file."""
        ...

    def pin(self, cap: str, progress: Progress | None) -> dict[str, Any]:
        """Fetch and keep every block."""
        ...

    def peers(self) -> list[dict[str, Any]]:
        """Configured and connected peers."""
        ...

    def add_peer(self, text: str) -> dict[str, Any]:
        """Remember a peer."""
        ...

    def remove_peer(self, text: str) -> dict[str, Any]:
        """Forget a peer."""
        ...

    def fsck(self) -> dict[str, Any]:
        """Verify every stored block."""
        ...


class DaemonBackend:
    """Ask the running daemon."""

    def __init__(self, client: DaemonClient) -> None:
        self.client = client

    def close(self) -> None:
        """Nothing to release."""

    def node_status(self) -> dict[str, Any]:
        """`status --node`."""
        result: dict[str, Any] = self.client.call("GET", "/v1/node")
        return result

    def objects(self) -> list[dict[str, Any]]:
        """`ls`."""
        result: list[dict[str, Any]] = self.client.call("GET", "/v1/objects")
        return result

    def add(self, path: Path, cls: str | None, convergent: bool, progress: Progress | None) -> dict[str, Any]:
        """`add`: the daemon reads the file itself."""
        body = {"path": str(path.absolute()), "storage_class": cls, "convergent": convergent}
        result: dict[str, Any] = self.client.stream("/v1/objects", body, progress)
        return result

    def info(self, ref: str) -> dict[str, Any]:
        """`info`."""
        result: dict[str, Any] = self.client.call("GET", f"/v1/objects/{ref}")
        return result

    def status(self, ref: str) -> dict[str, Any]:
        """`status OBJ`."""
        result: dict[str, Any] = self.client.call("GET", f"/v1/objects/{ref}/status")
        return result

    def summary(self) -> dict[str, Any]:
        """`status`."""
        result: dict[str, Any] = self.client.call("GET", "/v1/status")
        return result

    def unpin(self, cap: str) -> dict[str, Any]:
        """`unpin`."""
        result: dict[str, Any] = self.client.call("POST", "/v1/unpin", {"cap": cap})
        return result

    def delete(self, ref: str, force: bool = False) -> dict[str, Any]:
        """`rm`."""
        result: dict[str, Any] = self.client.call("DELETE", f"/v1/objects/{ref}?force={str(force).lower()}")
        return result

    def reclass(self, ref: str, class_name: str) -> dict[str, Any]:
        """`reclass`."""
        result: dict[str, Any] = self.client.call("POST", f"/v1/objects/{ref}/class", {"cls": class_name})
        return result

    def get(self, cap: str, output: Path | None, progress: Progress | None, force: bool) -> dict[str, Any]:
        """`get`: fetched from the swarm as needed, written where the CLI runs."""
        body = {"cap": cap, "output": str(output) if output else None, "cwd": str(Path.cwd()), "force": force}
        result: dict[str, Any] = self.client.stream("/v1/get", body, progress)
        return result

    def pin(self, cap: str, progress: Progress | None) -> dict[str, Any]:
        """`pin`."""
        result: dict[str, Any] = self.client.stream("/v1/pin", {"cap": cap}, progress)
        return result

    def peers(self) -> list[dict[str, Any]]:
        """`peers`."""
        result: list[dict[str, Any]] = self.client.call("GET", "/v1/peers")
        return result

    def add_peer(self, text: str) -> dict[str, Any]:
        """`peers add`."""
        from peercloud.net.link import parse_peer

        parse_peer(text)  # fail fast, with the same message, before the round trip
        result: dict[str, Any] = self.client.call("POST", "/v1/peers", {"peer": text})
        return result

    def remove_peer(self, text: str) -> dict[str, Any]:
        """`peers rm`."""
        result: dict[str, Any] = self.client.call("DELETE", f"/v1/peers/{quote(text.strip(), safe='')}")
        return result

    def fsck(self) -> dict[str, Any]:
        """`fsck`, run by the daemon so it does not race its writes."""
        result: dict[str, Any] = self.client.call("POST", "/v1/fsck")
        return result


@contextmanager
def open_backend(home: NodeHome) -> Iterator[Backend]:
    """The daemon when one runs for this home, else the home directly; closed after the command."""
    home.require()
    client = DaemonClient.find(home)
    if client is not None:
        backend: Backend = DaemonBackend(client)
    else:
        from peercloud.cli.local import LocalBackend  # the node's own code, only when it is needed

        backend = LocalBackend(home)
    try:
        yield backend
    finally:
        backend.close()
