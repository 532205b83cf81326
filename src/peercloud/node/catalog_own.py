"""This node's own entries that are not an add: objects it brings into the cloud, and entries
an object's manifest shows to be lies. Used by `node/catalog.py`, which signs and sends them."""

import logging
import time
from collections.abc import Callable, Mapping

from peercloud.cloud import catalog
from peercloud.cloud.classes import StorageClass
from peercloud.content.manifest import Manifest
from peercloud.errors import NotFoundError
from peercloud.store.index import CatalogEntry, Index

log = logging.getLogger(__name__)


def bring(
    index: Index, classes: Mapping[str, StorageClass], me: bytes, manifest_of: Callable[[bytes], Manifest]
) -> tuple[list[CatalogEntry], list[str]]:
    """Objects this node added before it was in the cloud join its catalog (each under its own
    class when the cloud has one of that coding): (entries brought, why others were not)."""
    brought, skipped = [], []
    for object_id in index.local_only():
        record = index.get_object(object_id)
        try:
            manifest = manifest_of(object_id)
        except NotFoundError:
            skipped.append(f"{object_id.hex()[:12]}: its manifest is not stored here")
            continue
        coding = manifest.coding
        same = [c for c in classes.values() if c.coding == coding]
        named = classes.get(record.storage_class) if record else None
        cls = named if named is not None and named.coding == coding else (same[0] if same else None)
        if cls is None:
            skipped.append(f"{object_id.hex()[:12]}: the cloud has no class of coding {coding.k}-of-{coding.n}")
            continue
        total, now = len(manifest.blocks()), time.time()
        op = catalog.Op(catalog.PUT, object_id, now, cls.name, total, coding.k, coding.n, manifest.size)
        if index.bring(catalog.owned(op, me, classes)):
            brought.append(CatalogEntry(object_id, cls.name, total, coding.k, coding.n, manifest.size, now))
    return brought, skipped


def belied(index: Index, manifest: Manifest) -> bool:
    """Owners' entries whose shape the object's manifest belies stop counting here; True if any did."""
    bad = [
        e.owner
        for e in index.owned_entries(manifest.object_id)
        if e.kind == catalog.PUT and catalog.manifest_problem(e, manifest) is not None
    ]
    if bad:
        log.warning(
            "catalog entries of %s by %d owner(s) belie its manifest: dropped", manifest.object_id.hex()[:12], len(bad)
        )
        index.mark_bad(manifest.object_id, bad)
    return bool(bad)
