"""From plaintext segment to stored blocks and back: encrypt, then erasure-code."""

from collections.abc import Mapping

from peercloud.content import erasure
from peercloud.content.cipher import SegmentCipher
from peercloud.content.erasure import Coding


class SegmentCodec:
    """Seals and opens the segments of one object (its key and coding fixed)."""

    def __init__(self, key: bytes, coding: Coding) -> None:
        self._cipher = SegmentCipher(key)
        self.coding = coding

    def seal(self, index: int, plaintext: bytes | memoryview) -> list[bytes]:
        """Encrypt segment `index` and return its n blocks."""
        return erasure.encode(self.coding, self._cipher.seal(index, plaintext))

    def open(self, index: int, shares: Mapping[int, bytes], ciphertext_length: int) -> bytes:
        """Rebuild and decrypt segment `index` from any k verified blocks."""
        ciphertext = erasure.decode(self.coding, shares, ciphertext_length)
        return self._cipher.open(index, ciphertext)
