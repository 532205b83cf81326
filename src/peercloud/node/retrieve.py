"""Getting an object back: verified blocks -> decoded, decrypted segments -> the output file.

The output is written under a temporary name beside the destination and renamed into place
only after every segment verified and decrypted, so a failed get never leaves a file behind.
"""

import os
import secrets
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from peercloud.content import cipher
from peercloud.content.manifest import Manifest
from peercloud.content.segment import SegmentCodec
from peercloud.errors import IntegrityError, NotFoundError
from peercloud.fsutil import DirectAppender, fsync_dir
from peercloud.node.pipeline import ordered_map
from peercloud.store.blockstore import BlockStore

Progress = Callable[[int], None]


def read_segment_blocks(store: BlockStore, manifest: Manifest, segment: int) -> dict[int, bytes]:
    """Any k verified blocks of one segment, or an error naming the blocks that failed."""
    k = manifest.coding.k
    shares: dict[int, bytes] = {}
    problems: list[str] = []
    for share in range(manifest.coding.n):
        bid = manifest.block(segment, share)
        try:
            shares[share] = store.get(bid)
        except (IntegrityError, NotFoundError) as e:
            problems.append(str(e))
            continue
        if len(shares) == k:
            return shares
    detail = "; ".join(problems)
    raise IntegrityError(f"segment {segment}: only {len(shares)} of the {k} blocks needed are readable: {detail}")


def check_key(manifest: Manifest, key: bytes) -> None:
    """Reject a key that is not the object's before reading any data."""
    if cipher.key_check(key) != manifest.key_check:
        raise IntegrityError("the read cap's key does not belong to this object (wrong or altered cap)")


def read_all(store: BlockStore, manifest: Manifest, key: bytes) -> bytes:
    """A small object's plaintext from local blocks, every block verified."""
    check_key(manifest, key)
    codec = SegmentCodec(key, manifest.coding)
    return b"".join(
        codec.open(seg, read_segment_blocks(store, manifest, seg), manifest.ciphertext_length(seg))
        for seg in range(manifest.segment_count)
    )


class OutputFile:
    """The destination of a get: a temp file beside `out`, renamed over it only when complete."""

    def __init__(self, store: BlockStore, manifest: Manifest, key: bytes, out: Path) -> None:
        check_key(manifest, key)
        self.store, self.manifest, self.out = store, manifest, out
        self._codec = SegmentCodec(key, manifest.coding)
        self._tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.part"
        try:
            self._writer = DirectAppender.create(self._tmp)
        except OSError as e:  # name the file the user asked for, not our temporary one
            raise OSError(e.errno, e.strerror, str(out)) from None
        self._fd = self._writer.fd

    def plaintext(self, segment: int) -> bytes:
        """Read, verify, decode and decrypt one segment (thread-safe)."""
        shares = read_segment_blocks(self.store, self.manifest, segment)
        return self._codec.open(segment, shares, self.manifest.ciphertext_length(segment))

    def append(self, plaintext: bytes) -> None:
        """Write the next segment; segments must come in order, so the file grows sequentially."""
        self._writer.append(plaintext)

    def finish(self) -> None:
        """Make the file durable and move it into place."""
        self._writer.finish()
        os.close(self._fd)
        self._fd = -1
        try:
            os.replace(self._tmp, self.out)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.out)) from None
        fsync_dir(self.out.parent)

    def abort(self) -> None:
        """Remove the partial file: a failed get leaves nothing behind."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)


def get_to_file(
    store: BlockStore,
    manifest: Manifest,
    key: bytes,
    out: Path,
    *,
    workers: int,
    progress: Progress | None = None,
) -> None:
    """Write the object's plaintext to `out` from local blocks, atomically."""
    output = OutputFile(store, manifest, key, out)
    try:
        # Workers verify and decrypt; this thread appends in order.
        with closing(ordered_map(output.plaintext, range(manifest.segment_count), workers)) as results:
            for plaintext in results:
                output.append(plaintext)
                if progress:
                    progress(len(plaintext))
        output.finish()
    except BaseException:
        output.abort()
        raise
