"""Capabilities as strings users paste: a read cap decrypts, a verify cap only stores and audits."""

from dataclasses import dataclass

from peercloud import textid
from peercloud.content.cipher import KEY_SIZE
from peercloud.content.merkle import HASH_SIZE
from peercloud.errors import UsageError

READ_PREFIX = "pcr1"
VERIFY_PREFIX = "pcv1"


@dataclass(frozen=True)
class VerifyCap:
    """Names an object without the key: enough to store, audit and repair it, not to read it."""

    object_id: bytes

    def __str__(self) -> str:
        return textid.encode(VERIFY_PREFIX, self.object_id)


@dataclass(frozen=True)
class ReadCap:
    """Object ID plus key: whoever holds it can fetch and decrypt the object."""

    object_id: bytes
    key: bytes

    def __str__(self) -> str:
        return textid.encode(READ_PREFIX, self.object_id + self.key)

    @property
    def verify_cap(self) -> VerifyCap:
        """The weaker cap to hand to storage peers."""
        return VerifyCap(self.object_id)


def parse_object_id(text: str) -> bytes:
    """Accept a 64-hex-digit object ID."""
    text = text.strip().lower()
    if len(text) != 2 * HASH_SIZE:
        raise UsageError(f"not an object ID or cap: {text[:20]!r}… (object IDs are 64 hex digits)")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError("not an object ID: it contains characters outside 0-9a-f") from None


def parse(text: str) -> ReadCap | VerifyCap:
    """Parse a read cap, verify cap, or bare object ID (a verify cap) from user input."""
    text = text.strip()
    try:
        if text.lower().startswith(READ_PREFIX + "_"):
            raw = textid.decode(READ_PREFIX, text, HASH_SIZE + KEY_SIZE, "read cap")
            return ReadCap(raw[:HASH_SIZE], raw[HASH_SIZE:])
        if text.lower().startswith(VERIFY_PREFIX + "_"):
            return VerifyCap(textid.decode(VERIFY_PREFIX, text, HASH_SIZE, "verify cap"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return VerifyCap(parse_object_id(text))
