"""Crash-safe file writes: temp file, fsync, rename; directory fsyncs where a name must survive."""

import errno
import fcntl
import mmap
import os
import tempfile
import threading
from pathlib import Path

ALIGN = 4096
_buffers = threading.local()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file_durably(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to `fd` and fsync it."""
    write_all(fd, data)
    os.fsync(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file, never a mix.

    The data is durable before the rename; the rename itself is durable once the caller
    fsyncs the directory (`fsync_dir`), which it does when the new name must survive a power
    cut (`init` syncs the home once, last).
    """
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        write_file_durably(fd, data)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise


def aligned_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer per thread, reused so its pages are touched once."""
    buf: mmap.mmap | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = mmap.mmap(-1, max(size, 1 << 20))
        _buffers.buf = buf
    return buf


def write_new_file_direct(path: Path, data: bytes | memoryview) -> None:
    """Create (or truncate) `path` with `data`, durably, bypassing the page cache where allowed.

    Block files are written once and read rarely; O_DIRECT skips the allocation of page-cache
    pages, which on this project's reference VM costs more than the disk write itself
    (docs/decisions/0004-block-store.md).
    """
    writer = DirectAppender.create(path)
    try:
        writer.append(data)
        writer.finish()
    finally:
        os.close(writer.fd)


class DirectAppender:
    """Appends to a new file with O_DIRECT where allowed, carrying unaligned bytes to the next call.

    The writer of `write_new_file_direct`: block files, written once and read rarely.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))
        self._carry = b""

    @classmethod
    def create(cls, path: Path) -> "DirectAppender":
        """Create or truncate `path`, asking for O_DIRECT and settling for less.

        The unaligned tail of the data goes through the page cache; where O_DIRECT is refused
        (tmpfs, some FUSE) everything does.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(path, flags | getattr(os, "O_DIRECT", 0), 0o644)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            fd = os.open(path, flags, 0o644)
        return cls(fd)

    def append(self, data: bytes | memoryview) -> None:
        """Write the next piece."""
        if not self._direct:
            write_all(self.fd, data)
            return
        pending = memoryview(self._carry + bytes(data) if self._carry else data)
        head = len(pending) - len(pending) % ALIGN
        if head:
            buf = aligned_buffer(head)
            buf[:head] = pending[:head]
            chunk = memoryview(buf)[:head]
            try:
                written = 0
                while written < head:
                    written += os.write(self.fd, chunk[written:])
            finally:
                chunk.release()
        self._carry = bytes(pending[head:])

    def finish(self) -> None:
        """Write the unaligned tail and fsync; the caller closes and renames."""
        if self._direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            write_all(self.fd, self._carry)
            self._carry = b""
        os.fsync(self.fd)
