"""Erasure coding of one encrypted segment into n shares, any k of which rebuild it (zfec).

Replicated classes use k = n = 1: the single share is the ciphertext itself, untouched. The
choice of zfec over pyeclib, with measurements, is in docs/decisions/0003-erasure-coding.md.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import zfec

MAX_SHARES = 256  # zfec's limit: share numbers fit in one byte


@dataclass(frozen=True)
class Coding:
    """k-of-n coding parameters; k == n == 1 means a plain (replicated) block."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n <= MAX_SHARES:
            raise ValueError(f"invalid coding {self.k}-of-{self.n}: need 1 <= k <= n <= 256")

    @property
    def is_replica(self) -> bool:
        """True when a segment is stored as one block with no coding."""
        return self.n == 1

    def share_size(self, length: int) -> int:
        """Bytes per share for a ciphertext of `length` bytes."""
        return length if self.is_replica else -(-length // self.k)


def encode(coding: Coding, data: bytes) -> list[bytes]:
    """Split `data` into n equal shares (zero-padded to a multiple of k)."""
    if coding.is_replica:
        return [data]
    size = coding.share_size(len(data))
    padded = data.ljust(size * coding.k, b"\x00")
    primary = [padded[i * size : (i + 1) * size] for i in range(coding.k)]
    shares: list[bytes] = zfec.Encoder(coding.k, coding.n).encode(primary)
    return shares


def decode(coding: Coding, shares: Mapping[int, bytes | memoryview], length: int) -> bytes | memoryview:
    """Rebuild `length` bytes from any k shares, given as {share number: share}."""
    if coding.is_replica:
        return shares[0][:length]
    if len(shares) < coding.k:
        raise ValueError(f"need {coding.k} shares to decode, have {len(shares)}")
    if not all(0 <= i < coding.n for i in shares):
        # zfec does not check: a bad share number loops forever or decodes garbage.
        raise ValueError(f"share numbers must be in 0..{coding.n - 1}")
    nums = sorted(shares)[: coding.k]
    blocks = [shares[i] for i in nums]
    if len({len(b) for b in blocks}) != 1:
        raise ValueError("shares differ in size")
    primary: list[bytes] = zfec.Decoder(coding.k, coding.n).decode(blocks, nums)
    return b"".join(primary)[:length]
