"""A node working on its own store: add, get, list, inspect, check. The daemon wraps this later."""

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peercloud.cloud.classes import StorageClass, lookup
from peercloud.content.caps import ReadCap, VerifyCap, parse
from peercloud.content.manifest import Manifest
from peercloud.errors import NotFoundError, UsageError
from peercloud.identity import Identity
from peercloud.node import fsck as fsck_mod
from peercloud.node import ingest, retrieve
from peercloud.node.config import Config, load_config
from peercloud.node.home import NodeHome
from peercloud.node.pipeline import default_workers
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Index, ObjectRecord


@dataclass(frozen=True)
class ObjectInfo:
    """An object's manifest with what this node knows of it."""

    manifest: Manifest
    record: ObjectRecord | None
    read_cap: ReadCap | None


class LocalNode:
    """One node's identity, config and store, opened from its home."""

    def __init__(self, home: NodeHome) -> None:
        home.require()
        self.home = home
        self.identity = Identity.load(home.key_path)
        self.config: Config = load_config(home.config_path)
        self.index = Index(home.index_path)
        self.store = BlockStore(home.path, self.index, self.config.quota)
        self.workers = default_workers(self.config.workers)

    def close(self) -> None:
        """Release the index."""
        self.index.close()

    def __enter__(self) -> "LocalNode":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(
        self,
        path: Path,
        class_name: str | None = None,
        *,
        convergent: bool = False,
        progress: ingest.Progress | None = None,
        classes: dict[str, StorageClass] | None = None,
        also: Callable[[sqlite3.Connection, ObjectRecord], None] | None = None,
        owner: bytes | None = None,
    ) -> ingest.AddResult:
        """Store a file as a new object in the given (or default) class; with `classes` (a cloud's),
        the object becomes the cloud's to place, owned by this node (or by `owner`, a key it
        writes entries for)."""
        cls = lookup(class_name or self.config.default_class, classes)
        secret = self.home.secret_path.read_bytes() if convergent else None
        return ingest.add_file(
            self.store,
            path,
            cls,
            segment_size=self.config.segment_size,
            workers=self.workers,
            convergence_secret=secret,
            progress=progress,
            owner=(owner or self.identity.peer_id.public_key) if classes is not None else None,
            author=self.identity.peer_id.public_key if owner else b"",
            also=also,
        )

    def resolve(self, text: str) -> ReadCap | VerifyCap:
        """Turn a cap, an object ID or an unambiguous ID prefix into a cap, using keys known here."""
        text = text.strip()
        if len(text) < 64 and all(c in "0123456789abcdefABCDEF" for c in text) and len(text) >= 4:
            matches = self.index.find_objects(bytes.fromhex(text[: len(text) // 2 * 2]))
            matches = [m for m in matches if m.hex().startswith(text.lower())]
            if len(matches) > 1:
                raise UsageError(f"object ID prefix {text!r} is ambiguous ({len(matches)} objects); give more digits")
            if not matches:
                raise NotFoundError(f"no object with ID starting {text!r} on this node")
            text = matches[0].hex()
        cap = parse(text)
        if isinstance(cap, VerifyCap):
            record = self.index.get_object(cap.object_id)
            if record is not None and record.read_key is not None:
                return ReadCap(cap.object_id, record.read_key)
        return cap

    def manifest(self, object_id: bytes) -> Manifest:
        """The object's manifest from the local store."""
        try:
            return Manifest.decode(self.store.get(object_id))
        except NotFoundError:
            raise NotFoundError(f"unknown object {object_id.hex()}: not stored on this node") from None

    def info(self, text: str) -> ObjectInfo:
        """Manifest summary plus local knowledge, for `peercloud info`."""
        cap = self.resolve(text)
        manifest = self.manifest(cap.object_id)
        return ObjectInfo(manifest, self.index.get_object(cap.object_id), cap if isinstance(cap, ReadCap) else None)

    def get(
        self, text: str, out: Path | None, progress: retrieve.Progress | None = None, force: bool = False
    ) -> tuple[Path, Manifest]:
        """Decrypt an object to `out` (default: its name, in the current directory)."""
        cap = self.resolve(text)
        if not isinstance(cap, ReadCap):
            raise UsageError("a verify cap or object ID cannot decrypt: give the read cap (pcr1_…)")
        manifest = self.manifest(cap.object_id)
        retrieve.check_key(manifest, cap.key)
        out = out or self.default_output(text, Path("."), force)
        if out.is_dir():
            raise UsageError(f"{out} is a directory: give a file name with -o")
        retrieve.get_to_file(self.store, manifest, cap.key, out, workers=self.workers, progress=progress)
        return out, manifest

    def default_output(self, text: str, cwd: Path, force: bool) -> Path:
        """The file name an object was added under, in `cwd`, for `get` without -o: a file already
        there is another one of that name, replaced only with --force (-o names the target)."""
        record = self.index.get_object(self.resolve(text).object_id)
        if record is None or not record.name:
            raise UsageError("no file name is known for this object here: give -o OUT")
        out = cwd / record.name
        if out.exists() and not force:
            raise UsageError(f"{record.name} exists here: give -o OUT, or --force to replace it")
        return out

    def objects(self) -> list[ObjectRecord]:
        """Objects known here, for `peercloud ls`."""
        return self.index.objects()

    def fsck(self) -> fsck_mod.FsckReport:
        """Verify everything stored here."""
        return fsck_mod.fsck(self.store, self.workers)
