import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peercloud import textid
from peercloud.content import caps, cipher, erasure, merkle
from peercloud.content.erasure import Coding
from peercloud.content.manifest import Manifest
from peercloud.content.segment import SegmentCodec
from peercloud.errors import FormatError, IntegrityError, UsageError

LEAF = merkle.LEAF_SIZE
sizes = st.one_of(st.integers(0, 3 * LEAF), st.sampled_from([LEAF - 1, LEAF, LEAF + 1, 5 * LEAF, 7 * LEAF + 3]))


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@settings(max_examples=60, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32), pick=st.integers(0, 10**6))
def test_any_leaf_proof_verifies(size: int, seed: int, pick: int) -> None:
    data = data_of(size, seed)
    root = merkle.block_id(data)
    index = pick % merkle.leaf_count(size)
    proof = merkle.prove(data, index)
    assert merkle.verify_proof(root, size, proof)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 4 * LEAF), seed=st.integers(0, 2**32), pick=st.integers(0, 10**9))
def test_flipped_bit_in_proof_fails(size: int, seed: int, pick: int) -> None:
    data = data_of(size, seed)
    root = merkle.block_id(data)
    proof = merkle.prove(data, pick % merkle.leaf_count(size))
    parts = [proof.leaf, *proof.path]
    total_bits = sum(len(p) for p in parts) * 8
    bit = (pick // 7) % total_bits
    for i, p in enumerate(parts):
        if bit < len(p) * 8:
            flipped = bytearray(p)
            flipped[bit // 8] ^= 1 << (bit % 8)
            parts[i] = bytes(flipped)
            break
        bit -= len(p) * 8
    bad = merkle.LeafProof(proof.index, parts[0], tuple(parts[1:]))
    assert not merkle.verify_proof(root, size, bad)


def test_proof_bound_to_index_and_size() -> None:
    data = data_of(3 * LEAF + 10, 1)
    root = merkle.block_id(data)
    proof = merkle.prove(data, 1)
    assert not merkle.verify_proof(root, len(data), merkle.LeafProof(2, proof.leaf, proof.path))
    assert not merkle.verify_proof(root, len(data) + LEAF, proof)
    assert not merkle.verify_proof(root, len(data), merkle.LeafProof(1, proof.leaf, proof.path[:-1]))
    with pytest.raises(IndexError):
        merkle.prove(data, 4)


def test_block_id_changes_with_any_byte() -> None:
    data = bytearray(data_of(2 * LEAF, 2))
    root = merkle.block_id(data)
    data[LEAF + 5] ^= 0x80
    assert merkle.block_id(data) != root
    assert merkle.block_id(b"") != merkle.block_id(b"\x00")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    km=st.sampled_from([(1, 1), (2, 1), (3, 2), (4, 2), (1, 2), (5, 5)]),
    size=st.integers(0, 20000),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_any_k_of_n_shares_decode(km: tuple[int, int], size: int, seed: int, data: st.DataObject) -> None:
    k, m = km
    coding = Coding(1, 1) if km == (1, 1) else Coding(k, k + m)
    payload = data_of(size, seed)
    shares = erasure.encode(coding, payload)
    assert len(shares) == coding.n
    assert len({len(s) for s in shares}) == 1
    chosen = data.draw(st.lists(st.sampled_from(range(coding.n)), min_size=coding.k, max_size=coding.n, unique=True))
    assert erasure.decode(coding, {i: shares[i] for i in chosen}, size) == payload


def test_too_few_shares_is_an_error() -> None:
    coding = Coding(3, 5)
    shares = erasure.encode(coding, b"x" * 100)
    with pytest.raises(ValueError, match="need 3 shares"):
        erasure.decode(coding, {0: shares[0], 4: shares[4]}, 100)
    with pytest.raises(ValueError, match="share numbers"):
        erasure.decode(coding, {0: shares[0], 1: shares[1], 7: shares[2]}, 100)
    with pytest.raises(ValueError, match="invalid coding"):
        Coding(3, 2)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 70000), index=st.integers(0, 2**40), seed=st.integers(0, 2**32))
def test_segment_round_trip(size: int, index: int, seed: int) -> None:
    key = cipher.random_key()
    codec = SegmentCodec(key, Coding(2, 3))
    plaintext = data_of(size, seed)
    blocks = codec.seal(index, plaintext)
    assert plaintext[:64] not in b"".join(blocks) or size < 16
    assert codec.open(index, {1: blocks[1], 2: blocks[2]}, size + cipher.TAG_SIZE) == plaintext
    with pytest.raises(IntegrityError):
        codec.open(index + 1, {0: blocks[0], 1: blocks[1]}, size + cipher.TAG_SIZE)
    with pytest.raises(IntegrityError):
        SegmentCodec(cipher.random_key(), Coding(2, 3)).open(index, {0: blocks[0], 1: blocks[1]}, size + 16)


def test_convergent_key_depends_on_content_secret_and_params() -> None:
    k1 = cipher.convergent_key(b"s", b"p", [b"hello", b"world"])
    assert k1 == cipher.convergent_key(b"s", b"p", [b"hellowor", b"ld"])
    assert k1 != cipher.convergent_key(b"t", b"p", [b"helloworld"])
    assert k1 != cipher.convergent_key(b"s", b"q", [b"helloworld"])
    assert k1 != cipher.convergent_key(b"s", b"p", [b"hellowarld"])


TWO_OF_THREE = Coding(2, 3)


def _manifest(size: int, segment_size: int = 4096, coding: Coding = TWO_OF_THREE) -> Manifest:
    segments = -(-size // segment_size)
    ids = data_of(segments * coding.n * 32, size)
    return Manifest(size, segment_size, coding, b"k" * 16, ids)


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(0, 200000),
    segment_size=st.integers(4096, 70000),
    km=st.sampled_from([(1, 1), (2, 3), (4, 6), (10, 20)]),
)
def test_manifest_round_trip(size: int, segment_size: int, km: tuple[int, int]) -> None:
    m = _manifest(size, segment_size, Coding(*km))
    encoded = m.encode()
    back = Manifest.decode(encoded)
    assert back == m
    assert back.object_id == merkle.block_id(encoded)
    assert sum(back.segment_length(i) for i in range(back.segment_count)) == size
    assert len(back.blocks()) == back.segment_count * km[1]


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=600))
def test_manifest_decoder_rejects_garbage(garbage: bytes) -> None:
    try:
        m = Manifest.decode(garbage)
    except FormatError:
        return
    assert m.encode() == garbage  # anything accepted must be a canonical manifest


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 10**6), value=st.integers(0, 255), cut=st.integers(0, 10**6))
def test_manifest_decoder_rejects_mutations(pos: int, value: int, cut: int) -> None:
    good = _manifest(10000).encode()
    mutated = bytearray(good)
    mutated[pos % len(good)] = value
    for candidate in (bytes(mutated), good[: cut % len(good)]):
        if candidate == good:
            continue
        try:
            m = Manifest.decode(candidate)
        except FormatError:
            continue
        assert m.encode() == candidate
        assert m.object_id != _manifest(10000).object_id


def test_manifest_limits() -> None:
    import msgpack

    body = msgpack.unpackb(_manifest(10000).encode())
    for field, value in [
        ("version", 2),
        ("k", 0),
        ("n", 300),
        ("segment_size", 100),
        ("size", -1),
        ("cipher", "rot13"),
        ("blocks", b"short"),
        ("magic", "x"),
        ("key_check", b"1"),
    ]:
        bad = msgpack.packb({**body, field: value}, use_bin_type=True)
        with pytest.raises(FormatError):
            Manifest.decode(bad)
    with pytest.raises(FormatError, match="too large"):
        Manifest.decode(b"\x00" * (16 * 1024 * 1024 + 1))


def test_caps_round_trip_and_typos() -> None:
    oid, key = data_of(32, 5), data_of(32, 6)
    rc = caps.ReadCap(oid, key)
    assert caps.parse(str(rc)) == rc
    assert caps.parse(str(rc).upper()) == rc
    assert caps.parse("  " + str(rc.verify_cap) + "\n") == rc.verify_cap
    assert caps.parse(oid.hex()) == caps.VerifyCap(oid)
    text = str(rc)
    typo = text[:20] + ("a" if text[20] != "a" else "b") + text[21:]
    with pytest.raises(UsageError, match="checksum"):
        caps.parse(typo)
    for bad in (text[:-3], text + "aa", "pcr1_!!!", "hello", str(rc.verify_cap).replace("pcv1", "pcr1")):
        with pytest.raises(UsageError):
            caps.parse(bad)


@given(payload=st.binary(min_size=0, max_size=64), text=st.text(max_size=80))
def test_textid_round_trip_and_garbage(payload: bytes, text: str) -> None:
    s = textid.encode("peer", payload)
    assert textid.decode("peer", s, len(payload), "peer ID") == payload
    with contextlib.suppress(ValueError):
        textid.decode("peer", text, len(payload), "peer ID")
