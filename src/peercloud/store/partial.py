"""A get's output while it is being written: a fixed partial-file name plus a journal of the
segments already verified and durable in it, so an interrupted get resumes where it stopped.

Both files sit beside the destination, named after it and the object (`.NAME.OBJ16.part`,
`.NAME.OBJ16.journal`), so a second `get` of the same object to the same place finds them and
another object never does. Segments are written at their offset as they arrive, in any order;
aligned parts go with O_DIRECT (no page-cache allocation, DESIGN.md §9), the unaligned tail of
the last segment through the page cache.

The journal is a header (magic, object ID, size, segment size) and 8-byte records (segment
number, CRC-32 of the object ID and that number). A record is appended only after the data it
names was synced, so after a power cut every record names durable data; a torn or zero-filled
tail fails its CRC and ends the list. The partial file becomes the destination by a rename only
once every segment is in: a get stays all or nothing.
"""

import contextlib
import errno
import os
import struct
import threading
import zlib
from pathlib import Path

from peercloud.errors import PeercloudError
from peercloud.fsutil import ALIGN, fsync_dir
from peercloud.units import format_size

MAGIC = b"peercloud-partial-v1\n"
_HEADER = struct.Struct("<32sQI")  # object ID, size, segment size
RECORD = struct.Struct("<II")  # segment, CRC-32(object ID + segment)
HEADER_SIZE = len(MAGIC) + _HEADER.size
SYNC_BYTES = 64 * 1024 * 1024  # verified data between journal syncs: at most this is fetched again


class PartialFile:
    """The output of one get in progress; thread-safe (segments are written from workers)."""

    def __init__(self, out: Path, object_id: bytes, size: int, segment_size: int) -> None:
        self.out, self.object_id, self.size, self.segment_size = out, object_id, size, segment_size
        stem = f".{out.name}.{object_id.hex()[:16]}"
        self.path = out.parent / f"{stem}.part"
        self.journal_path = out.parent / f"{stem}.journal"
        self._lock = threading.Lock()
        self._unsynced: list[int] = []  # written segments not yet in the journal
        self._unsynced_bytes = 0
        self.done: set[int] = set()  # segments durable and journalled
        self._fds: list[int] = []
        self._reader = -1
        try:
            self._open()
        except OSError as e:  # name the file the user asked for, not our partial one
            self.close()
            raise OSError(e.errno, e.strerror, str(out)) from None

    def _header(self) -> bytes:
        return MAGIC + _HEADER.pack(self.object_id, self.size, self.segment_size)

    def _record(self, segment: int) -> bytes:
        crc = zlib.crc32(self.object_id + segment.to_bytes(4, "little"))
        return RECORD.pack(segment, crc)

    def _open(self) -> None:
        header = self._header()
        done = self._read_journal(header)
        if done is None or not self.path.exists():
            if self.journal_path.exists():
                # Records of an earlier partial file must never vouch for this one's zeros.
                self.journal_path.unlink()
                fsync_dir(self.out.parent)
            self.journal = self._keep(os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.write(self.journal, header)  # durable with the first records (fdatasync)
            self.fd = self._keep(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            fsync_dir(self.out.parent)  # both names survive a power cut: a get it cut short resumes
        else:
            self.done = done
            self.journal = self._keep(os.open(self.journal_path, os.O_WRONLY))
            end = len(header) + len(done) * RECORD.size
            os.ftruncate(self.journal, end)  # a torn tail goes; the next records follow the valid ones
            os.lseek(self.journal, end, os.SEEK_SET)
            self.fd = self._keep(os.open(self.path, os.O_WRONLY))
        self.direct_fd = -1
        if self.segment_size % ALIGN == 0:
            try:
                self.direct_fd = self._keep(os.open(self.path, os.O_WRONLY | getattr(os, "O_DIRECT", 0)))
            except OSError as e:  # tmpfs and some FUSE refuse O_DIRECT: the page cache it is
                if e.errno != errno.EINVAL:
                    raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _read_journal(self, header: bytes) -> set[int] | None:
        """The segments a previous get of this object left verified here, or None (start afresh)."""
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(header):
            return None
        done: set[int] = set()
        count = -(-self.size // self.segment_size)
        for at in range(len(header), len(data) - RECORD.size + 1, RECORD.size):
            segment, _ = RECORD.unpack_from(data, at)
            if segment >= count or data[at : at + RECORD.size] != self._record(segment):
                break  # a torn or zero-filled tail: nothing after it counts
            done.add(segment)
        return done

    def write(self, segment: int, plaintext: memoryview) -> None:
        """Write one segment's plaintext at its offset (O_DIRECT from a page-aligned buffer, else
        through the page cache). Counted once `sync` journals it."""
        offset = segment * self.segment_size
        head = len(plaintext) - len(plaintext) % ALIGN if self.direct_fd >= 0 else 0
        if head:
            try:
                _pwrite_all(self.direct_fd, plaintext[:head], offset)
            except OSError as e:  # an unaligned buffer: the page cache takes it
                if e.errno != errno.EINVAL:
                    raise
                head = 0
        if head < len(plaintext):
            _pwrite_all(self.fd, plaintext[head:], offset + head)
        with self._lock:
            self._unsynced.append(segment)
            self._unsynced_bytes += len(plaintext)
            due = self._unsynced_bytes >= SYNC_BYTES
        if due:
            self.sync()

    def read(self, segment: int, length: int) -> bytes:
        """A segment written before (other fetchers are served blocks re-created from it)."""
        with self._lock:
            if not self._fds:
                raise OSError(errno.EBADF, "the partial file is closed", str(self.path))
            if self._reader < 0:
                self._reader = self._keep(os.open(self.path, os.O_RDONLY))
            return os.pread(self._reader, length, segment * self.segment_size)

    def sync(self) -> None:
        """Make written segments durable, then journal them (data first: a record never names
        data a power cut could take back)."""
        with self._lock:
            segments, self._unsynced, self._unsynced_bytes = self._unsynced, [], 0
        if not segments:
            return
        self._sync_data()
        self._append(b"".join(self._record(s) for s in segments))
        with self._lock:
            self.done.update(segments)

    def _sync_data(self) -> None:
        os.fdatasync(self.fd)

    def _append(self, records: bytes) -> None:
        os.write(self.journal, records)
        os.fdatasync(self.journal)

    def finish(self) -> None:
        """Every segment is in: the partial file becomes the destination, durably; the journal goes."""
        os.ftruncate(self.fd, self.size)  # an empty object, or a last segment never written past
        os.fsync(self.fd)
        self.close()
        try:
            os.replace(self.path, self.out)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.out)) from None
        fsync_dir(self.out.parent)
        self.journal_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop writing; what was journalled stays for the next get to resume from."""
        with self._lock:  # a read in progress finishes first; later ones see the file closed
            for fd in self._fds:
                os.close(fd)
            self._fds, self._reader = [], -1

    def abandon(self, error: BaseException) -> None:
        """The get failed: keep what is verified for the next one to resume from (syncing what
        was written meanwhile) and say so in `error`'s message; with nothing verified, leave
        nothing behind."""
        if self._fds:
            with contextlib.suppress(OSError):  # a failing disk: what was journalled stays
                self.sync()
        self.close()
        if not self.done:
            self.path.unlink(missing_ok=True)
            self.journal_path.unlink(missing_ok=True)
        elif isinstance(error, PeercloudError) and error.args:
            count = -(-self.size // self.segment_size)
            kept = sum(min(self.segment_size, self.size - s * self.segment_size) for s in self.done)
            error.args = (
                f"{error.args[0]}; {len(self.done)} of {count} segments ({format_size(kept)}) are verified "
                f"and kept in {self.path}: the same get resumes from there",
                *error.args[1:],
            )


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
