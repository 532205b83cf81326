"""Noise XX against the cacophony test vector, plus misuse and tampering."""

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.wire.noise import Handshake, NoiseError

# Noise_XX_25519_AESGCM_SHA256 from the cacophony test vectors (haskell-cryptography/cacophony,
# vectors/cacophony.txt): keys, prologue, payloads and the expected bytes on the wire.
VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "1b7aefb1125762aa21a252890d00af54519638b76437444538f9a52f21e2e0dc",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843757117acceb05bd7a45733bc22015c97"
            "a9d0cbaf41b80446d5988ff5127235d76b79eade70f473d6a4ef521fdcbeda5340d01e028ba793fc059f2724a83af05f"
            "12dda0448a7621a926b379a92477fd",
        ),
        (
            "462e20412e20486179656b",
            "c90f1cf77eba4e50edb038991565e36c9758943a989229b6051244dc4fbecb6946744b401af2ee1a5881b65fbb87fd07"
            "cb6a328ececc9ce6ce84c399dc332d4fd521fa4bb7f467ce909395",
        ),
        ("4361726c204d656e676572", "bc3fa77f6aca3e8466d7dc6bea10013e88a6a29add5132b461806c"),
        ("4a65616e2d426170746973746520536179", "250b01074cdfe0df2ecf8ccbf1737b15a2ddb5b52fd9a396604e9c793cee3b3bb9"),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "449d4d433b3cdc3d02bf6fc881774b9df54366ebcffb9689bb13f14709822cd7ef42bcdb4d",
        ),
    ],
}


def _key(hexstr: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexstr))


def _pair(prologue: bytes = b"") -> tuple[Handshake, Handshake]:
    return (
        Handshake(True, X25519PrivateKey.generate(), prologue),
        Handshake(False, X25519PrivateKey.generate(), prologue),
    )


def test_cacophony_vector() -> None:
    v = VECTOR
    prologue = bytes.fromhex(v["prologue"])
    init = Handshake(True, _key(v["init_static"]), prologue, _key(v["init_ephemeral"]))
    resp = Handshake(False, _key(v["resp_static"]), prologue, _key(v["resp_ephemeral"]))
    sides = [init, resp]
    for i, (payload_hex, ct_hex) in enumerate(v["messages"][:3]):
        writer, reader = sides[i % 2], sides[(i + 1) % 2]
        wire = writer.write_message(bytes.fromhex(payload_hex))
        assert wire.hex() == ct_hex
        assert reader.read_message(wire) == bytes.fromhex(payload_hex)
    assert init.complete
    assert resp.complete
    assert init.handshake_hash.hex() == resp.handshake_hash.hex() == v["handshake_hash"]
    assert init.remote_static == _key(v["resp_static"]).public_key().public_bytes_raw()
    ciphers = {id(init): init.split(), id(resp): resp.split()}
    for i, (payload_hex, ct_hex) in enumerate(v["messages"][3:], start=3):
        writer, reader = sides[i % 2], sides[(i + 1) % 2]
        ct = ciphers[id(writer)][0].encrypt(b"", bytes.fromhex(payload_hex))
        assert ct.hex() == ct_hex
        assert ciphers[id(reader)][1].decrypt(b"", ct) == bytes.fromhex(payload_hex)


def test_prologue_mismatch_fails() -> None:
    init = Handshake(True, X25519PrivateKey.generate(), b"a")
    resp = Handshake(False, X25519PrivateKey.generate(), b"b")
    resp.read_message(init.write_message())
    with pytest.raises(NoiseError):
        init.read_message(resp.write_message())


def test_out_of_turn_and_reuse_fail() -> None:
    init, resp = _pair()
    with pytest.raises(NoiseError, match="not our turn"):
        resp.write_message()
    with pytest.raises(NoiseError, match="not expecting"):
        init.read_message(b"x" * 32)
    with pytest.raises(NoiseError, match="not complete"):
        init.split()


def _exchange_after_tampered_first(sides: list[Handshake], first: bytes) -> None:
    sides[1].read_message(first)
    sides[0].read_message(sides[1].write_message())


@settings(max_examples=200, deadline=None)
@given(step=st.integers(0, 2), pos=st.integers(0, 10**6), bit=st.integers(0, 7), cut=st.booleans())
def test_tampered_handshake_messages_fail(step: int, pos: int, bit: int, cut: bool) -> None:
    init, resp = _pair()
    sides = [init, resp]
    for i in range(3):
        wire = bytearray(sides[i % 2].write_message(b"payload"))
        if i == step:
            if cut:
                wire = wire[: pos % len(wire)]
            else:
                wire[pos % len(wire)] ^= 1 << bit
            if step == 0:
                # Message 1 is unauthenticated (e only): a short one is refused at once, other
                # tampering changes the transcript, so message 2 fails to authenticate.
                with pytest.raises(NoiseError):
                    _exchange_after_tampered_first(sides, bytes(wire))
                return
            with pytest.raises(NoiseError):
                sides[(i + 1) % 2].read_message(bytes(wire))
            return
        sides[(i + 1) % 2].read_message(bytes(wire))


def test_transport_rejects_replay_and_tamper() -> None:
    init, resp = _pair()
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    (i_send, _), (_, r_recv) = init.split(), resp.split()
    m1 = i_send.encrypt(b"", b"hello")
    assert r_recv.decrypt(b"", m1) == b"hello"
    with pytest.raises(NoiseError):
        r_recv.decrypt(b"", m1)  # replay: the nonce moved on
    m2 = bytearray(i_send.encrypt(b"", b"world"))
    m2[0] ^= 1
    with pytest.raises(NoiseError):
        r_recv.decrypt(b"", bytes(m2))
