"""Moving an object to another storage class, as S3's storage-class transitions do.

Within one coding (replicas to replicas, or the same k+m) the object stays: its owner's catalog
entry names the new class and placement re-places it. Across codings the blocks themselves
differ, so the object is made again: fetched and decrypted (the read cap is needed), added
under the new class as a new object, and the old one deleted with its holders' agreement.
"""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peercloud.cloud import catalog
from peercloud.content.caps import ReadCap
from peercloud.content.manifest import Manifest
from peercloud.errors import RefusedError, UsageError
from peercloud.node.catalog import CatalogSync
from peercloud.node.deletion import Deletions
from peercloud.node.ingest import AddResult
from peercloud.node.local import LocalNode
from peercloud.node.membership import Membership


class Service(Protocol):
    """What reclassing uses of the node service (which calls it)."""

    node: LocalNode
    membership: Membership
    catalog: CatalogSync
    deletions: Deletions

    async def get(self, text: str, out: Path, progress: Callable[[int], None] | None) -> tuple[Path, Manifest]:
        """Fetch and decrypt to `out`."""
        ...

    async def add(
        self, path: Path, class_name: str | None, convergent: bool, progress: Callable[[int], None] | None
    ) -> AddResult:
        """Add a file to the cloud."""
        ...

    def replan(self, object_id: bytes) -> None:
        """Have placement look at the object again."""
        ...


@dataclass(frozen=True)
class Reclassed:
    """What `reclass` did: the object now under the class, and the old one if it was made anew."""

    object_id: bytes
    storage_class: str
    replaced: bytes | None = None
    deletion: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The result as `reclass --json` gives it."""
        return {
            "object_id": self.object_id.hex(),
            "class": self.storage_class,
            "new_object": self.replaced is not None,
            "replaced": self.replaced.hex() if self.replaced else None,
            "deletion": self.deletion,
        }


async def reclass(service: Service, text: str, class_name: str) -> Reclassed:
    """Put an object this node owns under another class of the cloud."""
    doc = service.membership.doc
    if doc is None:
        raise RefusedError("this node is in no cloud: classes are the cloud's")
    cls = doc.class_map.get(class_name)
    if cls is None:
        raise UsageError(f"no class {class_name!r} in this cloud (see `peercloud class ls`)")
    index, me = service.node.index, service.node.identity.peer_id.public_key
    cap = service.node.resolve(text)
    object_id = cap.object_id
    mine = [e for e in index.owned_entries(object_id) if e.owner == me and e.kind == catalog.PUT]
    if not mine or not index.catalog(object_id):
        raise RefusedError(f"object {object_id.hex()[:12]} is not yours: only its owners change its class")
    entry = mine[0]
    if (cls.coding.k, cls.coding.n) == (entry.k, entry.n):
        op = catalog.Op(
            catalog.PUT,
            object_id,
            max(time.time(), entry.at + 0.001),
            class_name,
            entry.total_blocks,
            entry.k,
            entry.n,
            entry.size,
        )
        index.put_own([catalog.owned(op, me, doc.class_map)])
        service.catalog.flush_soon()
        service.replan(object_id)
        return Reclassed(object_id, index.catalog(object_id)[0].storage_class)
    if not isinstance(cap, ReadCap):
        raise UsageError(
            f"class {class_name!r} codes objects differently: the object is made again, which needs"
            " its read cap (pcr1_…)"
        )
    record = index.get_object(object_id)
    name = record.name if record is not None and record.name else object_id.hex()[:12]
    with tempfile.TemporaryDirectory(dir=service.node.home.path, prefix="reclass-") as tmp:
        path = service.node.home.path / tmp / name
        await service.get(str(cap), path, None)
        added = await service.add(path, class_name, convergent=False, progress=None)
    report = await service.deletions.delete(object_id, own_only=True)
    return Reclassed(added.manifest.object_id, class_name, object_id, report.as_json())
