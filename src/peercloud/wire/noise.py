"""Noise_XX_25519_AESGCM_SHA256 (Noise Protocol Framework, revision 34), sans-IO.

Written on `cryptography`'s X25519, AES-GCM, SHA-256 and HMAC rather than taken from a library:
the handshake is ~150 lines, and owning it lets the transport keep one AESGCM object per
direction on the hot path. It is checked against the cacophony test vectors in
tests/test_noise.py. Nothing here touches a socket: callers pass bytes in and get bytes out.
"""

import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
MAX_NONCE = 2**64 - 1


class NoiseError(Exception):
    """The handshake or a transport message failed: wrong key, tampering, or misuse."""


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # all-zero output: a low-order point
        raise NoiseError("peer sent an invalid Curve25519 public key") from None


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


class CipherState:
    """One direction's key and nonce counter."""

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self.n = 0

    @property
    def has_key(self) -> bool:
        """False before the handshake mixed in a DH result: data then travels in clear."""
        return self._aead is not None

    def _nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted; reconnect")
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "big")

    def encrypt(self, ad: bytes, plaintext: bytes | memoryview) -> bytes:
        """Encrypt with the next nonce (identity before a key is set)."""
        if self._aead is None:
            return bytes(plaintext)
        out = self._aead.encrypt(self._nonce(), plaintext, ad or None)
        self.n += 1
        return out

    def decrypt_into(self, ad: bytes, ciphertext: bytes | memoryview, out: memoryview) -> None:
        """`decrypt` into `out` (exactly the plaintext's length): a block's records land in its
        payload buffer, with no plaintext object per record. Needs the key."""
        assert self._aead is not None
        try:
            self._aead.decrypt_into(self._nonce(), ciphertext, ad or None, out)
        except InvalidTag:
            raise NoiseError("message failed authentication") from None
        self.n += 1

    def decrypt(self, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt with the next nonce; the nonce only advances on success."""
        if self._aead is None:
            return bytes(ciphertext)
        try:
            out = self._aead.decrypt(self._nonce(), ciphertext, ad or None)
        except InvalidTag:
            raise NoiseError("message failed authentication") from None
        self.n += 1
        return out


@dataclass
class _SymmetricState:
    h: bytes
    ck: bytes
    cipher: CipherState = field(default_factory=CipherState)

    @classmethod
    def start(cls) -> "_SymmetricState":
        h = (
            PROTOCOL_NAME.ljust(HASHLEN, b"\x00")
            if len(PROTOCOL_NAME) <= HASHLEN
            else hashlib.sha256(PROTOCOL_NAME).digest()
        )
        return cls(h, h)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


class Handshake:
    """One side of an XX handshake: three messages, then a pair of transport ciphers.

    Initiator: write, read, write. Responder: read, write, read. After the third message,
    `remote_static` is the peer's static key (authenticated by the handshake) and `split()`
    returns (send, receive) cipher states.
    """

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._s = static
        self._e = ephemeral
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self._sym = _SymmetricState.start()
        self._sym.mix_hash(prologue)
        self._step = 0

    @property
    def complete(self) -> bool:
        """True after the third message."""
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        """Transcript hash: unique per session, for channel binding."""
        return self._sym.h

    @property
    def our_turn(self) -> bool:
        """True when the next message is ours to write."""
        return not self.complete and (self._step % 2 == 0) == self.initiator

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce our next handshake message carrying `payload`."""
        if not self.our_turn:
            raise NoiseError("not our turn to write a handshake message")
        sym, out = self._sym, bytearray()
        if self._step == 0:  # -> e
            out += self._write_e()
        elif self._step == 1:  # <- e, ee, s, es
            assert self._re is not None
            out += self._write_e()
            sym.mix_key(_dh(self._ephemeral, self._re))
            out += sym.encrypt_and_hash(_public_bytes(self._s))
            sym.mix_key(_dh(self._s, self._re))
        else:  # -> s, se
            assert self._re is not None
            out += sym.encrypt_and_hash(_public_bytes(self._s))
            sym.mix_key(_dh(self._s, self._re))
        out += sym.encrypt_and_hash(payload)
        self._step += 1
        if len(out) > MAX_MESSAGE:
            raise NoiseError("handshake message too large")
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message; returns its payload."""
        if self.our_turn or self.complete:
            raise NoiseError("not expecting a handshake message now")
        sym, view = self._sym, memoryview(message)
        try:
            if self._step == 0:  # -> e
                view = self._read_e(view)
            elif self._step == 1:  # <- e, ee, s, es
                view = self._read_e(view)
                sym.mix_key(_dh(self._ephemeral, self._peer_e))
                view = self._read_s(view)
                sym.mix_key(_dh(self._ephemeral, self._peer_s))
            else:  # -> s, se
                view = self._read_s(view)
                sym.mix_key(_dh(self._ephemeral, self._peer_s))
            payload = sym.decrypt_and_hash(bytes(view))
        except NoiseError:
            self._step = -1  # a failed handshake is dead
            raise
        self._step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) ciphers for transport messages."""
        if not self.complete:
            raise NoiseError("handshake not complete")
        c1, c2 = self._sym.split()
        return (c1, c2) if self.initiator else (c2, c1)

    @property
    def _ephemeral(self) -> X25519PrivateKey:
        assert self._e is not None
        return self._e

    @property
    def _peer_e(self) -> bytes:
        assert self._re is not None
        return self._re

    @property
    def _peer_s(self) -> bytes:
        assert self.remote_static is not None
        return self.remote_static

    def _write_e(self) -> bytes:
        if self._e is None:
            self._e = X25519PrivateKey.generate()
        pub = _public_bytes(self._e)
        self._sym.mix_hash(pub)
        return pub

    def _read_e(self, view: memoryview) -> memoryview:
        if len(view) < DHLEN:
            raise NoiseError("handshake message too short")
        self._re = bytes(view[:DHLEN])
        self._sym.mix_hash(self._re)
        return view[DHLEN:]

    def _read_s(self, view: memoryview) -> memoryview:
        size = DHLEN + (TAGLEN if self._sym.cipher.has_key else 0)
        if len(view) < size:
            raise NoiseError("handshake message too short")
        self.remote_static = self._sym.decrypt_and_hash(bytes(view[:size]))
        return view[size:]
