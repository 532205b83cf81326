"""Checked text encoding for IDs and caps: prefix, base32 payload, and a checksum against typos.

Users copy peer IDs and caps between terminals, chat windows and config files. Each string
carries a type prefix (so a verify cap is never mistaken for a read cap) and a 4-byte BLAKE3
checksum over prefix and payload, so a mistyped or truncated string is rejected with a clear
message instead of silently naming something else.
"""

import base64
import binascii

import blake3

CHECK_SIZE = 4


def _checksum(prefix: str, payload: bytes) -> bytes:
    return blake3.blake3(prefix.encode() + b"\x00" + payload).digest()[:CHECK_SIZE]


def encode(prefix: str, payload: bytes) -> str:
    """Render payload as `prefix_<base32>` with an embedded checksum."""
    raw = payload + _checksum(prefix, payload)
    return prefix + "_" + base64.b32encode(raw).decode().rstrip("=").lower()


def decode(prefix: str, text: str, payload_size: int | None, what: str) -> bytes:
    """Parse a string made by `encode` (payload of any length when size is None); errors name `what`."""
    text = text.strip()
    head, sep, body = text.partition("_")
    if not sep or head.lower() != prefix:
        raise ValueError(f"not a {what}: expected it to start with '{prefix}_'")
    body = body.upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise ValueError(f"not a {what}: it contains characters outside base32") from None
    if len(raw) < CHECK_SIZE or (payload_size is not None and len(raw) != payload_size + CHECK_SIZE):
        raise ValueError(f"not a {what}: wrong length (truncated or extra characters?)")
    payload, check = raw[:-CHECK_SIZE], raw[-CHECK_SIZE:]
    if _checksum(prefix, payload) != check:
        raise ValueError(f"{what} checksum mismatch: it was mistyped or altered")
    return payload
