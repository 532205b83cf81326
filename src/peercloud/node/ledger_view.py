"""The ledger as this node sees it, from its index alone: online (NodeService) or not (the CLI).

Which objects it knows, which blocks it counts as holding, and each object's status with its
holders' claims and proofs, for `status` and the API.
"""

from peercloud.cloud.classes import DEFAULT_CLASSES
from peercloud.cloud.document import CloudDoc
from peercloud.cloud.keepers import tag_value
from peercloud.cloud.ledger import Holder, ObjectStatus, indexes_from_bitmap, object_status
from peercloud.errors import NotFoundError
from peercloud.identity import PeerId
from peercloud.node.local import LocalNode


def known_objects(node: LocalNode) -> list[bytes]:
    """The cloud's objects, then those known only here, each once."""
    ids = dict.fromkeys(e.object_id for e in node.index.catalog())
    ids.update(dict.fromkeys(r.object_id for r in node.index.objects()))
    return list(ids)


def holding_here(node: LocalNode, object_id: bytes) -> list[int] | None:
    """Positions of the object's blocks this node counts as holding (None: object unknown).

    For the cloud's objects only blocks it keeps (pinned or held): a cache a get left behind
    is no copy the cloud can count on. What we announce and what our ledger shows agree.
    """
    index = node.index
    cached_too = index.is_pinned(object_id) or not index.catalog(object_id)
    return index.local_indexes(object_id, held_only=not cached_too)


def ledger_view(node: LocalNode, object_id: bytes, online: set[PeerId], doc: CloudDoc | None) -> ObjectStatus:
    """Ledger view from the index alone (works without the daemon: peers then show offline)."""
    entries = node.index.catalog(object_id)
    if entries:
        e = entries[0]
        total, k, n, class_name, size = e.total_blocks, e.k, e.n, e.storage_class, e.size
    elif node.store.has(object_id):
        manifest = node.manifest(object_id)
        record = node.index.get_object(object_id)
        total, k, n, size = len(manifest.block_ids) // 32, manifest.coding.k, manifest.coding.n, manifest.size
        class_name = record.storage_class if record else "-"
    else:
        raise NotFoundError(f"unknown object {object_id.hex()}: not in this node's cloud or store")
    classes = doc.class_map if doc else DEFAULT_CLASSES
    cls = classes.get(class_name)
    local = holding_here(node, object_id) or []

    def spread_of(pid: PeerId) -> str | None:
        member = doc.member(pid) if doc is not None else None
        return tag_value(member.tags, cls.spread) if member is not None and cls is not None and cls.spread else None

    holders = []
    for _, h in node.index.holdings(object_id):
        pid = PeerId(h.peer_id)
        claimed = indexes_from_bitmap(h.bitmap, total)
        proved = set(indexes_from_bitmap(h.confirmed, total))
        holders.append(
            Holder(
                str(pid),
                tuple(claimed),
                pid in online,
                False,
                h.updated_at,
                tuple(i for i in claimed if i in proved),
                doc is None or doc.member(pid) is not None,
                h.failed_at is not None,
                h.pinned,
                h.checked_at,
                spread_of(pid),
            )
        )
    me = node.identity.peer_id
    pinned = node.index.is_pinned(object_id)
    return object_status(object_id, total, str(me), local, holders, k, n, cls, size, pinned, spread_of(me))
