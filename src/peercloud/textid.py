"""Checked text encoding for IDs and caps: prefix, base32 payload, and a checksum against typos.

Users copy peer IDs and caps between terminals, chat windows and config files. Each string
carries a type prefix (so a verify cap is never mistaken for a read cap) and a 4-byte BLAKE3
checksum over prefix and payload, so a mistyped or truncated string is rejected with a clear
message instead of silently naming something else.

Each value has exactly one text form, up to the case of its letters: `encode` writes lowercase,
and `decode` also takes upper or mixed case (base32 ignores case, and QR codes or shouting
terminals upper-case what users paste) and white space around the string. Anything else that
would decode to the same bytes is refused: `=` padding, and a last character whose unused low
bits are not zero (base32 packs 5 bits per character, so the last one may carry bits that belong
to no byte; changing only those would otherwise give a second string for the same peer ID).
"""

import base64
import binascii

import blake3

CHECK_SIZE = 4


def _checksum(prefix: str, payload: bytes) -> bytes:
    return blake3.blake3(prefix.encode() + b"\x00" + payload).digest()[:CHECK_SIZE]


def _base32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def encode(prefix: str, payload: bytes) -> str:
    """Render payload as `prefix_<base32>` with an embedded checksum."""
    return prefix + "_" + _base32(payload + _checksum(prefix, payload))


def decode(prefix: str, text: str, payload_size: int | None, what: str) -> bytes:
    """Parse a string made by `encode` (payload of any length when size is None); errors name `what`.

    Case and surrounding white space are ignored; every other departure from the canonical
    form is a ValueError, so two different strings never name the same thing.
    """
    text = text.strip()
    head, sep, body = text.partition("_")
    if not sep or head.lower() != prefix:
        raise ValueError(f"not a {what}: expected it to start with '{prefix}_'")
    body = body.lower()
    if "=" in body:
        raise ValueError(f"not a {what}: it ends in '=' padding, which peercloud never writes")
    try:
        raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise ValueError(f"not a {what}: it contains characters outside base32") from None
    if len(raw) < CHECK_SIZE or (payload_size is not None and len(raw) != payload_size + CHECK_SIZE):
        raise ValueError(f"not a {what}: wrong length (truncated or extra characters?)")
    if _base32(raw) != body:
        raise ValueError(f"not a {what}: not canonical (the last character was altered?)")
    payload, check = raw[:-CHECK_SIZE], raw[-CHECK_SIZE:]
    if _checksum(prefix, payload) != check:
        raise ValueError(f"{what} checksum mismatch: it was mistyped or altered")
    return payload
