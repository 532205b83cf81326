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
from peercloud.fsutil import fsync_dir, write_all
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


def get_to_file(
    store: BlockStore,
    manifest: Manifest,
    key: bytes,
    out: Path,
    *,
    workers: int,
    progress: Progress | None = None,
) -> None:
    """Write the object's plaintext to `out`, atomically."""
    check_key(manifest, key)
    codec = SegmentCodec(key, manifest.coding)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:

        def fetch(segment: int) -> bytes:
            shares = read_segment_blocks(store, manifest, segment)
            return codec.open(segment, shares, manifest.ciphertext_length(segment))

        # Workers verify and decrypt; this thread appends in order, so the file grows sequentially.
        with closing(ordered_map(fetch, range(manifest.segment_count), workers)) as results:
            for plaintext in results:
                write_all(fd, plaintext)
                if progress:
                    progress(len(plaintext))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, out)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
