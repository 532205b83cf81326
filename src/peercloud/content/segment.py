"""From plaintext segment to stored blocks and back: encrypt, then erasure-code."""

from collections.abc import Mapping

from peercloud.content import erasure, merkle
from peercloud.content.cipher import SegmentCipher, key_check
from peercloud.content.erasure import Coding
from peercloud.content.manifest import Manifest


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

    def open_into(
        self, index: int, shares: Mapping[int, bytes | memoryview], ciphertext_length: int, out: memoryview
    ) -> memoryview:
        """`open` into a reused buffer: a replicated segment decrypts straight from its block."""
        ciphertext = erasure.decode(self.coding, shares, ciphertext_length)
        return self._cipher.open_into(index, ciphertext, out)


def encode_bytes(data: bytes, key: bytes, coding: Coding, segment_size: int) -> tuple[Manifest, list[bytes]]:
    """Encode a whole object held in memory: the reference the streaming add must match."""
    codec = SegmentCodec(key, coding)
    blocks: list[bytes] = []
    for index, start in enumerate(range(0, len(data), segment_size)):
        blocks.extend(codec.seal(index, data[start : start + segment_size]))
    ids = b"".join(merkle.block_id(b) for b in blocks)
    return Manifest(len(data), segment_size, coding, key_check(key), ids), blocks
