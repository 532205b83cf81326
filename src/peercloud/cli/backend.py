"""The CLI's two ways of working: through the running daemon, or directly on the node home.

Both return the same JSON-shaped dicts (api/views.py), so every command renders one way.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from peercloud.api import views
from peercloud.cli.client import DaemonClient
from peercloud.cloud.document import SignedDoc
from peercloud.cloud.ledger import ObjectStatus
from peercloud.errors import DaemonNeededError, NotFoundError
from peercloud.identity import PeerId
from peercloud.net.link import parse_peer
from peercloud.node.home import NodeHome
from peercloud.node.ledger_view import known_objects, ledger_view
from peercloud.node.local import LocalNode
from peercloud.swarm.peers import PeerInfo

Progress = Callable[[str, int], None]
_NEEDS_DAEMON = "this needs the network: start the daemon with `peercloud up` (in another terminal), then retry"


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


class LocalBackend:
    """Work on the node home directly (no daemon running)."""

    def __init__(self, home: NodeHome) -> None:
        self.node = LocalNode(home)
        raw = self.node.index.cloud_doc()
        self.doc = SignedDoc.decode(raw).doc if raw else None

    def close(self) -> None:
        """Release the index."""
        self.node.close()

    def node_status(self) -> dict[str, Any]:
        """Only a daemon has uptime, addresses and links."""
        raise DaemonNeededError(_NEEDS_DAEMON)

    def objects(self) -> list[dict[str, Any]]:
        """`ls`."""
        return [views.object_row(r) for r in self.node.objects()]

    def add(self, path: Path, cls: str | None, convergent: bool, progress: Progress | None) -> dict[str, Any]:
        """`add` on this machine."""
        if progress and path.is_file():
            progress("total", path.stat().st_size)
        advance = (lambda n: progress("advance", n)) if progress else None
        return views.add_result(self.node.add(path, cls, convergent=convergent, progress=advance))

    def info(self, ref: str) -> dict[str, Any]:
        """`info`."""
        return views.info(self.node.info(ref))

    def status(self, ref: str) -> dict[str, Any]:
        """The ledger as last known; every peer shows offline without the daemon."""
        object_id = self.node.resolve(ref).object_id
        return views.object_status(self._ledger(object_id), self.node.index.get_object(object_id))

    def summary(self) -> dict[str, Any]:
        """Every object's health as last known (peers offline)."""
        ids = known_objects(self.node)
        return views.summary([(self._ledger(oid), self.node.index.get_object(oid)) for oid in ids])

    def _ledger(self, object_id: bytes) -> ObjectStatus:
        return ledger_view(self.node, object_id, set(), self.doc)

    def unpin(self, cap: str) -> dict[str, Any]:
        """Unpinning checks the live ledger."""
        raise DaemonNeededError(_NEEDS_DAEMON)

    def get(self, cap: str, output: Path | None, progress: Progress | None, force: bool) -> dict[str, Any]:
        """`get` from the local store only."""
        ref = self.node.resolve(cap)
        manifest = self.node.manifest(ref.object_id)
        if progress:
            progress("total", manifest.size)
        advance = (lambda n: progress("advance", n)) if progress else None
        path, m = self.node.get(cap, output, advance, force)
        return {"object_id": m.object_id.hex(), "path": str(path), "size": m.size}

    def pin(self, cap: str, progress: Progress | None) -> dict[str, Any]:
        """Pinning fetches from peers."""
        raise DaemonNeededError(_NEEDS_DAEMON)

    def peers(self) -> list[dict[str, Any]]:
        """Configured peers, all shown as not connected."""
        infos = [PeerInfo(PeerId(raw), addr) for raw, addr in self.node.index.peers()]
        return views.peers(infos, self.node.index)

    def add_peer(self, text: str) -> dict[str, Any]:
        """Remember a peer; the daemon dials it when it starts."""
        peer_id, address = parse_peer(text)
        self.node.index.add_peer(peer_id.public_key, str(address))
        return {"peer_id": str(peer_id), "address": str(address)}

    def remove_peer(self, text: str) -> dict[str, Any]:
        """Forget a peer."""
        peer_id = PeerId.parse(text)
        if not self.node.index.remove_peer(peer_id.public_key):
            raise NotFoundError(f"{peer_id} is not a known peer")
        return {"removed": str(peer_id)}

    def fsck(self) -> dict[str, Any]:
        """`fsck`."""
        return views.fsck(self.node.fsck(), self.node.objects())


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
        parse_peer(text)  # fail fast, with the same message, before the round trip
        result: dict[str, Any] = self.client.call("POST", "/v1/peers", {"peer": text})
        return result

    def remove_peer(self, text: str) -> dict[str, Any]:
        """`peers rm`."""
        result: dict[str, Any] = self.client.call("DELETE", f"/v1/peers/{PeerId.parse(text)}")
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
    backend: Backend = DaemonBackend(client) if client is not None else LocalBackend(home)
    try:
        yield backend
    finally:
        backend.close()
