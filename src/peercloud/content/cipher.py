"""Segment encryption: AES-256-GCM under a per-object key, nonce derived from the segment index.

Each object has its own key, so deriving the nonce from the segment index never repeats a
(key, nonce) pair. The key is random by default; the convergent mode derives it from the
plaintext and a secret shared inside one cloud, so identical files dedupe there (as in
Tahoe-LAFS) while staying opaque to anyone without the secret.
"""

import os
from collections.abc import Iterable

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peercloud.errors import IntegrityError

KEY_SIZE = 32
TAG_SIZE = 16
CIPHER_NAME = "aes-256-gcm"
_AAD = b"peercloud segment v1"
_KEY_CHECK_CONTEXT = "peercloud 2026-11 key check v1"
_CONVERGENT_CONTEXT = b"peercloud convergent key v1\x00"


def random_key() -> bytes:
    """A fresh per-object key: the default, so equal files stay unlinkable."""
    return os.urandom(KEY_SIZE)


def convergent_key(secret: bytes, params: bytes, chunks: Iterable[bytes]) -> bytes:
    """Derive the key from the plaintext (and coding params), so equal files give equal objects."""
    h = blake3.blake3(key=blake3.blake3(secret).digest())
    h.update(_CONVERGENT_CONTEXT + params)
    for chunk in chunks:
        h.update(chunk)
    return h.digest()


def key_check(key: bytes) -> bytes:
    """A 16-byte commitment to the key, stored in the manifest to reject wrong keys up front."""
    return blake3.blake3(key, derive_key_context=_KEY_CHECK_CONTEXT).digest()[:16]


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


class SegmentCipher:
    """Encrypts and decrypts the segments of one object."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("object keys are 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, index: int, plaintext: bytes | memoryview) -> bytes:
        """Encrypt segment `index`; the result is 16 bytes longer (the GCM tag)."""
        return self._aead.encrypt(_nonce(index), plaintext, _AAD)

    def open(self, index: int, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt segment `index`, raising IntegrityError when the tag does not verify."""
        try:
            return self._aead.decrypt(_nonce(index), ciphertext, _AAD)
        except InvalidTag:
            raise IntegrityError(f"segment {index} does not decrypt: wrong key or damaged data") from None

    def open_into(self, index: int, ciphertext: bytes | memoryview, out: memoryview) -> memoryview:
        """Decrypt segment `index` into `out` (a reused, aligned buffer: no allocation per segment);
        returns the plaintext's view of it."""
        plain = out[: len(ciphertext) - TAG_SIZE]
        try:
            self._aead.decrypt_into(_nonce(index), ciphertext, _AAD, plain)
        except InvalidTag:
            raise IntegrityError(f"segment {index} does not decrypt: wrong key or damaged data") from None
        return plain
