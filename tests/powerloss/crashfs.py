"""crashfs: a FUSE filesystem for tests that forgets, at a power cut, everything not made durable.

The backing folder always holds exactly the durable image: what a disk would keep if the power
went now. Everything else lives in this process's memory, as a kernel's page cache and dentry
cache would hold it:

- file data written and not yet fsynced (or fdatasynced) on that file;
- directory entries created, renamed, linked or unlinked in a directory not fsynced since.

`fsync(file)` writes the file's dirty pages and size to its backing file (or to a hidden
staging file, `.crashfs/ino-N`, while no durable directory entry names it yet).
`fsync(dir)` makes that directory's entries what they are now: a new name is linked to the
file's durable data (an empty file if its data was never synced, as after a real crash), a
name gone is unlinked, and a rename is applied atomically (old name gone, new name there, as a
journaling filesystem commits it) when either of its directories is synced. Nothing else ever
reaches the backing folder: no write-back of dirty pages, no implicit sync.

The power cut comes at mutating operation number `--cut-at` (writes, truncates, creates,
renames, links, unlinks, mkdir, rmdir, fsyncs; reads and lookups are not counted): that
operation and every one after it fail with EIO, so the process under test sees a dead disk.
With `--torn P` each page written and not synced reaches the disk with probability P at the
cut (seeded: a kernel may have written some dirty pages back). When the filesystem is
unmounted, what it held in memory is gone; `.crashfs/` is orphans, removed at the next mount
(as fsck would). The model is documented in docs/decisions/0010-power-loss-tests.md.

    python -m tests.powerloss.crashfs BACKING MOUNTPOINT [--cut-at N] [--torn P] [--seed S] [--stats FILE]
        [--on-cut FILE]
"""

import argparse
import errno
import json
import os
import random
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

PAGE = 4096
STAGING = ".crashfs"
ROOT = pyfuse3.ROOT_INODE
Link = tuple[int, bytes]  # (parent inode, name)


@dataclass
class Node:
    """One inode: its live state (what processes see) and what of it is durable."""

    ino: int
    mode: int
    links: set[Link] = field(default_factory=set)  # live directory entries naming it
    durable_links: set[Link] = field(default_factory=set)  # entries the backing folder has
    staged: bool = False  # its durable data sits in .crashfs/ino-N (no durable name yet)
    data: bytearray | None = None  # live content, while it differs from the backing file
    dirty: set[int] = field(default_factory=set)  # pages written since the last sync
    entries: dict[bytes, int] = field(default_factory=dict)  # a directory's live entries
    durable: dict[bytes, int] = field(default_factory=dict)  # and those the backing folder has
    target: bytes = b""  # a symlink's
    renamed_from: Link | None = None  # the durable entry a pending rename will consume
    opened: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class CrashFS(pyfuse3.Operations):
    """The filesystem; one instance per mount."""

    enable_writeback_cache = False  # every write reaches us: the kernel holds no dirty data

    def __init__(
        self, backing: Path, cut_at: int = 0, torn: float = 0.0, seed: int = 0, on_cut: Path | None = None
    ) -> None:
        super().__init__()
        self.backing = backing
        self.cut_at, self.torn, self.rng = cut_at, torn, random.Random(seed)
        self.on_cut = on_cut  # touched at the cut, so a workload can tell the power went
        self.ops = 0
        self.cut = False
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, int] = {}  # file handle → inode
        self._next_ino = ROOT + 1
        self._next_fh = 1
        shutil.rmtree(backing / STAGING, ignore_errors=True)  # orphans of the last power cut
        self.nodes[ROOT] = Node(ROOT, stat.S_IFDIR | 0o755)
        self._scan(backing, self.nodes[ROOT], {})

    # -- the durable image

    def _scan(self, path: Path, parent: Node, seen: dict[tuple[int, int], int]) -> None:
        """Load the backing folder: every entry there is durable (hard links share a node)."""
        for entry in os.scandir(path):
            if entry.name == STAGING and parent.ino == ROOT:
                continue
            st = entry.stat(follow_symlinks=False)
            key = (st.st_dev, st.st_ino)
            node = self.nodes.get(seen[key]) if key in seen else None
            if node is None:
                node = self._new(st.st_mode)
                seen[key] = node.ino
                if stat.S_ISLNK(st.st_mode):
                    node.target = os.fsencode(os.readlink(entry.path))
            name = os.fsencode(entry.name)
            parent.entries[name] = parent.durable[name] = node.ino
            node.links.add((parent.ino, name))
            node.durable_links.add((parent.ino, name))
            if node.is_dir:
                self._scan(Path(entry.path), node, seen)

    def _new(self, mode: int) -> Node:
        node = Node(self._next_ino, mode)
        self.nodes[node.ino] = node
        self._next_ino += 1
        return node

    def _where(self, node: Node) -> Path | None:
        """The node's backing path: a durable name, its staging path, or None (nothing durable)."""
        if node.ino == ROOT:
            return self.backing
        if node.durable_links:
            parent, name = min(node.durable_links)
            base = self._where(self.nodes[parent])
            assert base is not None  # a durable entry lives in a directory that has a backing path
            return base / os.fsdecode(name)
        return self.backing / STAGING / f"ino-{node.ino}" if node.staged else None

    def _stage(self, node: Node) -> Path:
        """A backing path for the node, creating its staging file or directory if it has none."""
        where = self._where(node)
        if where is not None:
            return where
        (self.backing / STAGING).mkdir(exist_ok=True)
        where = self.backing / STAGING / f"ino-{node.ino}"
        if node.is_dir:
            where.mkdir(mode=0o755)
        elif stat.S_ISLNK(node.mode):
            os.symlink(node.target, where)
        else:
            where.touch(mode=0o644)
        node.staged = True
        return where

    def _sync_file(self, node: Node) -> None:
        """fsync: the live content becomes the durable content."""
        if node.data is None:
            return
        path = self._stage(node)
        fd = os.open(path, os.O_WRONLY)
        try:
            for page in sorted(node.dirty):
                os.pwrite(fd, node.data[page * PAGE : (page + 1) * PAGE], page * PAGE)
            os.ftruncate(fd, len(node.data))
        finally:
            os.close(fd)
        node.data, node.dirty = None, set()

    def _sync_dir(self, d: Node) -> None:
        """fsync of a directory: its entries as they are now become durable."""
        for name, ino in list(d.durable.items()):
            if d.durable.get(name) == ino and d.entries.get(name) != ino:
                self._unpersist(d, name, self.nodes[ino])
        for name, ino in list(d.entries.items()):
            if d.durable.get(name) != ino:
                self._persist(d, name, self.nodes[ino])

    def _persist(self, d: Node, name: bytes, node: Node) -> None:
        """Make entry `name` of `d` durable (a pending rename to it is applied whole)."""
        dest = self._stage(d) / os.fsdecode(name)
        if name in d.durable:  # replaced: the old file's entry goes in the same step
            self._unpersist(d, name, self.nodes[d.durable[name]])
        old = node.renamed_from
        if old is not None and old in node.durable_links and self.nodes[old[0]].entries.get(old[1]) != node.ino:
            base = self._where(self.nodes[old[0]])
            assert base is not None
            os.rename(base / os.fsdecode(old[1]), dest)  # the rename, old name and new at once
            node.durable_links.discard(old)
            del self.nodes[old[0]].durable[old[1]]
            node.renamed_from = None
        elif node.durable_links and not node.is_dir:
            src = self._where(node)
            assert src is not None
            os.link(src, dest, follow_symlinks=False)  # another name for durable data
        elif node.staged:
            os.rename(self.backing / STAGING / f"ino-{node.ino}", dest)
            node.staged = False
        elif node.is_dir:
            dest.mkdir(mode=stat.S_IMODE(node.mode))
        elif stat.S_ISLNK(node.mode):
            os.symlink(node.target, dest)
        else:
            dest.touch(mode=stat.S_IMODE(node.mode))  # its data was never synced: an empty file
        node.durable_links.add((d.ino, name))
        d.durable[name] = node.ino

    def _unpersist(self, d: Node, name: bytes, node: Node) -> None:
        """Make the removal of entry `name` of `d` durable (with the new name, if it was renamed)."""
        if node.renamed_from == (d.ino, name):
            for parent, new in node.links - node.durable_links:
                self._persist(self.nodes[parent], new, node)  # the rename, atomically
                return
        if node.is_dir:
            self._sync_dir(node)  # what left it, left it first (a journal commits in order)
        path = self._where(d)
        assert path is not None
        src = path / os.fsdecode(name)
        node.durable_links.discard((d.ino, name))
        del d.durable[name]
        if node.durable_links:
            os.unlink(src)
        elif node.links or node.opened:
            # Still alive (open, or named where it is not durable yet): its data stays staged.
            (self.backing / STAGING).mkdir(exist_ok=True)
            os.rename(src, self.backing / STAGING / f"ino-{node.ino}")
            node.staged = True
        else:
            (self.backing / STAGING).mkdir(exist_ok=True)
            os.rename(src, self.backing / STAGING / f"gone-{node.ino}")

    # -- the power cut

    def _op(self) -> None:
        """Count a mutating operation; at the cut, and ever after, the disk is dead."""
        if self.cut:
            raise pyfuse3.FUSEError(errno.EIO)
        self.ops += 1
        if self.cut_at and self.ops >= self.cut_at:
            self.cut = True
            self._tear()
            if self.on_cut is not None:
                self.on_cut.touch()
            raise pyfuse3.FUSEError(errno.EIO)

    def _tear(self) -> None:
        """At the cut, some unsynced pages of files with durable data may have reached the disk."""
        if not self.torn:
            return
        for node in self.nodes.values():
            path = self._where(node) if node.data is not None else None
            if path is None or node.data is None:
                continue
            fd = os.open(path, os.O_WRONLY)
            try:
                for page in sorted(node.dirty):
                    if self.rng.random() < self.torn:
                        os.pwrite(fd, node.data[page * PAGE : (page + 1) * PAGE], page * PAGE)
            finally:
                os.close(fd)

    def _alive(self) -> None:
        if self.cut:
            raise pyfuse3.FUSEError(errno.EIO)

    # -- helpers

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _child(self, parent: int, name: bytes) -> Node:
        ino = self._node(parent).entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.nodes[ino]

    def _size(self, node: Node) -> int:
        if node.data is not None:
            return len(node.data)
        if node.is_dir:
            return 4096
        if stat.S_ISLNK(node.mode):
            return len(node.target)
        where = self._where(node)
        return where.lstat().st_size if where is not None else 0

    def _content(self, node: Node) -> bytearray:
        """The live content, loaded from the backing file on first change (copy-up)."""
        if node.data is None:
            where = self._where(node)
            node.data = bytearray(where.read_bytes()) if where is not None else bytearray()
        return node.data

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = max(1, len(node.links)) + (1 if node.is_dir else 0)
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_size = self._size(node)
        a.st_blksize = PAGE
        a.st_blocks = -(-a.st_size // 512)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.attr_timeout = a.entry_timeout = 0
        return a

    def _link(self, parent: Node, name: bytes, node: Node) -> None:
        if name in parent.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        parent.entries[name] = node.ino
        node.links.add((parent.ino, name))
        parent.mtime_ns = time.time_ns()

    def _unlink(self, parent: Node, name: bytes) -> Node:
        node = self._child(parent.ino, name)
        del parent.entries[name]
        node.links.discard((parent.ino, name))
        parent.mtime_ns = time.time_ns()
        if not node.links and not node.opened:
            node.data = None  # nothing can reach it any more
        return node

    def _handle(self, node: Node) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = node.ino
        node.opened += 1
        # SQLite maps its -shm file (mmap needs the page cache); everything else bypasses it.
        names = {n for _, n in node.links}
        return pyfuse3.FileInfo(fh=fh, direct_io=not any(n.endswith(b"-shm") for n in names))

    # -- operations

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self._alive()
        if name == b".":
            return self._attr(self._node(parent_inode))
        return self._attr(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self._alive()
        return self._attr(self._node(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size or fields.update_mode:
            self._op()
        if fields.update_size:
            data = self._content(node)
            old = len(data)
            if attr.st_size < old:
                del data[attr.st_size :]
            else:
                data.extend(bytes(attr.st_size - old))
            node.dirty.update(range(min(old, attr.st_size) // PAGE, max(old, attr.st_size) // PAGE + 1))
            node.mtime_ns = time.time_ns()
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self._attr(node)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        self._alive()
        return self._node(inode).target

    async def opendir(self, inode: int, ctx: Any) -> int:
        self._alive()
        node = self._node(inode)
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = node.ino
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        self._alive()
        d = self.nodes[self.handles[fh]]
        names = sorted(d.entries)
        for i, name in enumerate(names[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(self.nodes[d.entries[name]]), i):
                break

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._op()
        self._sync_dir(self.nodes[self.handles[fh]])

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        self._op()
        node = self._new(stat.S_IFDIR | (mode & ~ctx.umask & 0o7777))
        self._link(self._node(parent_inode), name, node)
        return self._attr(node)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._op()
        if self._child(parent_inode, name).entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._unlink(self._node(parent_inode), name)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._op()
        if self._child(parent_inode, name).is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._unlink(self._node(parent_inode), name)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        self._op()
        node = self._new(stat.S_IFLNK | 0o777)
        node.target = target
        self._link(self._node(parent_inode), name, node)
        return self._attr(node)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        self._op()
        node = self._node(inode)
        self._link(self._node(new_parent_inode), new_name, node)
        return self._attr(node)

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any
    ) -> None:
        self._op()
        old_dir, new_dir = self._node(parent_inode_old), self._node(parent_inode_new)
        node = self._child(parent_inode_old, name_old)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        target = new_dir.entries.get(name_new)
        if target == node.ino:
            return
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if self.nodes[target].is_dir != node.is_dir or self.nodes[target].entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY if node.is_dir else errno.EISDIR)
            self._unlink(new_dir, name_new)
        if (old_dir.ino, name_old) in node.durable_links and node.renamed_from is None:
            node.renamed_from = (old_dir.ino, name_old)
        self._unlink(old_dir, name_old)
        self._link(new_dir, name_new, node)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        self._op()
        node = self._new(stat.S_IFREG | (mode & ~ctx.umask & 0o7777))
        self._link(self._node(parent_inode), name, node)
        return self._attr(node)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        self._alive()
        node = self._node(inode)
        if flags & os.O_TRUNC:
            self._op()
            if self._size(node):
                self._content(node).clear()
                node.dirty.add(0)
        return self._handle(node)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._op()
        node = self._new(stat.S_IFREG | (mode & ~ctx.umask & 0o7777))
        node.data = bytearray()
        self._link(self._node(parent_inode), name, node)
        return self._handle(node), self._attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self._alive()
        node = self.nodes[self.handles[fh]]
        if node.data is not None:
            return bytes(node.data[off : off + size])
        where = self._where(node)
        if where is None:
            return b""
        with open(where, "rb") as f:
            f.seek(off)
            return f.read(size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._op()
        node = self.nodes[self.handles[fh]]
        data = self._content(node)
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off : off + len(buf)] = buf
        node.dirty.update(range(off // PAGE, (off + len(buf) - 1) // PAGE + 1))
        node.mtime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._op()
        self._sync_file(self.nodes[self.handles[fh]])

    async def release(self, fh: int) -> None:
        node = self.nodes.get(self.handles.pop(fh, 0))
        if node is not None:
            node.opened -= 1
            if not node.links and not node.opened:
                node.data = None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for a in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, a, getattr(sv, a))
        out.f_namemax = 255
        return out


def main() -> None:
    """Mount crashfs until unmounted (fusermount3 -u); then write its statistics."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("backing", type=Path)
    ap.add_argument("mountpoint", type=Path)
    ap.add_argument("--cut-at", type=int, default=0, help="mutating operation at which the power goes (0: never)")
    ap.add_argument("--torn", type=float, default=0.0, help="chance that an unsynced page survives the cut")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", type=Path, default=None, help="write {ops, cut} here at unmount")
    ap.add_argument("--on-cut", type=Path, default=None, help="create this file when the power goes")
    args = ap.parse_args()
    fs = CrashFS(args.backing.resolve(), args.cut_at, args.torn, args.seed, args.on_cut)
    options = set(pyfuse3.default_options) | {"fsname=crashfs", "allow_other", "default_permissions"}
    pyfuse3.init(fs, str(args.mountpoint), options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
        if args.stats is not None:
            args.stats.write_text(json.dumps({"ops": fs.ops, "cut": fs.cut}))


if __name__ == "__main__":
    main()
