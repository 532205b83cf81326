"""Node identity: an Ed25519 key pair and the self-certifying peer ID derived from it."""

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from peercloud import textid
from peercloud.errors import IntegrityError, NotFoundError, UsageError
from peercloud.fsutil import fsync_dir, write_file_durably

PEER_PREFIX = "peer"
PUBLIC_KEY_SIZE = 32


@dataclass(frozen=True, order=True)
class PeerId:
    """A peer's public key, printed with a type prefix and a checksum against typos."""

    public_key: bytes

    def __str__(self) -> str:
        return textid.encode(PEER_PREFIX, self.public_key)

    def short(self) -> str:
        """The first characters, enough to tell peers apart in a table."""
        return str(self)[: len(PEER_PREFIX) + 1 + 8]

    @classmethod
    def parse(cls, text: str) -> "PeerId":
        """Read a peer ID a user typed or pasted."""
        try:
            return cls(textid.decode(PEER_PREFIX, text, PUBLIC_KEY_SIZE, "peer ID"))
        except ValueError as e:
            raise UsageError(str(e)) from None

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` over `data` was made by this peer's private key."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except Exception:
            return False
        return True


class Identity:
    """The node's private key: signs on its behalf; never leaves the node home."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.peer_id = PeerId(raw)

    @classmethod
    def generate(cls) -> "Identity":
        """A new random identity."""
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """Sign `data` as this peer."""
        return self._key.sign(data)

    def save_new(self, path: Path) -> None:
        """Write the key to a new file, mode 0600; refuses to overwrite an existing key."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_file_durably(fd, pem)
        finally:
            os.close(fd)
        # link() fails if the key exists, so a race between two inits cannot replace a key.
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()
        fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path) -> "Identity":
        """Read the node key, with a clear error when it is unreadable or not Ed25519."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise IntegrityError(f"cannot read node key {path}: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityError(f"node key {path} is not an Ed25519 key")
        return cls(key)


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def resolve_peer(text: str, known: Iterable[PeerId]) -> PeerId:
    """A full peer ID, or the start of one (as tables show it: `peer_5xjp6237`) naming exactly
    one of the `known` peers; case does not matter."""
    text = text.strip()
    try:
        return PeerId.parse(text)
    except UsageError:
        start = text.lower()[len(PEER_PREFIX) + 1 :]
        full = -(-PUBLIC_KEY_SIZE * 8 // 5)  # base32 characters of a whole key
        if not 4 <= len(start) < full or not text.lower().startswith(PEER_PREFIX + "_") or start.strip(_BASE32):
            raise  # not the start of a peer ID (a whole one that does not parse included): the error says why
    matches = {p for p in known if str(p).startswith(text.lower())}
    if not matches:
        raise NotFoundError(f"no known peer starts with {text!r}")
    if len(matches) > 1:
        raise UsageError(f"{text!r} matches {len(matches)} peers: give more characters")
    return matches.pop()
