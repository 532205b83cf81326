"""fsck: verify every stored block, quarantine damage, clear leftovers of interrupted writes."""

from contextlib import closing
from dataclasses import dataclass, field

from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.errors import PeercloudError
from peercloud.node.pipeline import ordered_map
from peercloud.store.blockstore import BlockStore


@dataclass
class FsckReport:
    """What fsck checked and found; `damaged` decides the exit code."""

    blocks_checked: int = 0
    bytes_checked: int = 0
    corrupt: list[bytes] = field(default_factory=list)
    missing: list[bytes] = field(default_factory=list)
    strays_removed: int = 0
    damaged_objects: list[tuple[bytes, str, bool]] = field(default_factory=list)  # id, name, recoverable

    @property
    def damaged(self) -> bool:
        """True when any block was missing or corrupt, or an object is no longer whole here."""
        return bool(self.corrupt or self.missing or self.damaged_objects)


def fsck(store: BlockStore, workers: int) -> FsckReport:
    """Check the whole store; damaged blocks are moved to quarantine/ and forgotten.

    Safe while the daemon writes: the store judges each leftover and each damaged block again
    under its lock, so a write in flight is neither cut short nor mistaken for damage.
    """
    report = FsckReport()

    def check(item: tuple[bytes, int]) -> tuple[bytes, int, str]:
        bid, size = item
        try:
            data = store.path(bid).read_bytes()
        except FileNotFoundError:
            return bid, size, "missing"
        return bid, len(data), "ok" if merkle.block_id(data) == bid else "corrupt"

    indexed = store.index.block_ids()
    with closing(ordered_map(check, indexed, workers)) as results:
        for bid, size, state in results:
            report.blocks_checked += 1
            report.bytes_checked += size
            # A block deleted (or deleted and stored again) since the listing is no damage:
            # quarantine() re-checks under the store's lock and says so with None.
            if state != "ok" and store.quarantine(bid) is not None:
                (report.missing if state == "missing" else report.corrupt).append(bid)

    # Temp files and renamed block files with no row, that no write in flight owns.
    report.strays_removed = store.remove_leftovers()

    for record in store.index.objects():
        # Pinned objects must be whole here; a cached partial copy (an erasure-coded get keeps
        # only k shares per segment) is normal in a swarm, not damage.
        oid = record.object_id
        if store.index.is_pinned(oid) and not store.index.has_every_block(oid):
            report.damaged_objects.append((oid, record.name, _recoverable(store, oid)))
    return report


def _recoverable(store: BlockStore, object_id: bytes) -> bool:
    """True when every segment still has k verified-present blocks here."""
    try:
        manifest = Manifest.decode(store.get(object_id))
    except PeercloudError:
        return False
    n, k = manifest.coding.n, manifest.coding.k
    return all(sum(store.has(manifest.block(seg, j)) for j in range(n)) >= k for seg in range(manifest.segment_count))
