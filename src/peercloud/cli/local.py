"""The CLI working directly on the node home (no daemon): the same JSON-shaped dicts as the
daemon's API (api/views.py). Its own module, imported only when no daemon runs, so commands that
go through the daemon do not load the node's storage and protocol code (CLI start time)."""

from pathlib import Path
from typing import Any

from peercloud.api import views
from peercloud.cli.backend import NEEDS_DAEMON, Progress
from peercloud.cloud.document import SignedDoc
from peercloud.cloud.ledger import ObjectStatus
from peercloud.errors import DaemonNeededError, NotFoundError
from peercloud.identity import PeerId, resolve_peer
from peercloud.net.link import parse_peer
from peercloud.node.home import NodeHome
from peercloud.node.ledger_view import known_objects, ledger_view
from peercloud.node.local import LocalNode
from peercloud.swarm.peers import PeerInfo


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
        raise DaemonNeededError(NEEDS_DAEMON)

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
        raise DaemonNeededError(NEEDS_DAEMON)

    def delete(self, ref: str, force: bool = False) -> dict[str, Any]:
        """A delete goes to the cloud's members."""
        raise DaemonNeededError(NEEDS_DAEMON)

    def reclass(self, ref: str, class_name: str) -> dict[str, Any]:
        """A new class is the cloud's business."""
        raise DaemonNeededError(NEEDS_DAEMON)

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
        raise DaemonNeededError(NEEDS_DAEMON)

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
        peer_id = resolve_peer(text, [PeerId(raw) for raw, _ in self.node.index.peers()])
        if not self.node.index.remove_peer(peer_id.public_key):
            raise NotFoundError(f"{peer_id} is not a known peer")
        return {"removed": str(peer_id)}

    def fsck(self) -> dict[str, Any]:
        """`fsck`."""
        return views.fsck(self.node.fsck(), self.node.objects())
