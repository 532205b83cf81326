"""docs/formats.md's test vectors, recomputed from the code, and the streaming add checked against them."""

import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peercloud.cloud.classes import lookup
from peercloud.connect.record import Candidate, Kind, PeerRecord, verify
from peercloud.content import cipher, merkle
from peercloud.content.caps import ReadCap
from peercloud.content.erasure import Coding
from peercloud.content.segment import encode_bytes
from peercloud.identity import Identity
from peercloud.node import ingest
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Index

DOC = Path(__file__).parent.parent / "docs" / "formats.md"


def vectors() -> dict:  # type: ignore[type-arg]
    match = re.search(r"```json vectors\n(.*?)```", DOC.read_text(), re.S)
    assert match, "formats.md lost its vectors block"
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def test_documented_vectors_match_the_code() -> None:
    v = vectors()
    assert v["merkle"]["empty"] == merkle.block_id(b"").hex()
    assert v["merkle"]["abc"] == merkle.block_id(b"abc").hex()
    assert v["merkle"]["pattern_200000"] == merkle.block_id(bytes(i % 251 for i in range(200000))).hex()
    key = bytes.fromhex(v["key_hex"])
    plain = bytes(i * 7 % 251 for i in range(150_000))
    assert cipher.key_check(key).hex() == v["key_check"]
    for name, expected in v["objects"].items():
        manifest, blocks = encode_bytes(plain, key, Coding(expected["k"], expected["n"]), v["segment_size"])
        assert [merkle.block_id(b).hex() for b in blocks] == expected["block_ids"], name
        assert len(manifest.encode()) == expected["manifest_bytes"]
        assert manifest.object_id.hex() == expected["object_id"]
        cap = ReadCap(manifest.object_id, key)
        assert (str(cap), str(cap.verify_cap)) == (expected["read_cap"], expected["verify_cap"])
    ident = Identity(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert str(ident.peer_id) == v["peer_id_for_seed_zero"]
    r = v["peer_record_seed_zero"]
    candidates = [Candidate(Kind(kind), address) for kind, address in r["candidates"]]
    record = PeerRecord.sign(ident, r["seq"], candidates, now=r["signed_at"], ttl=r["ttl"])
    assert record.raw.hex() == r["hex"]
    assert verify(bytes.fromhex(r["hex"]), now=r["signed_at"]) == record


def test_streaming_add_matches_reference_encoding(tmp_path: Path) -> None:
    data = bytes(i * 13 % 256 for i in range(300_000))
    src = tmp_path / "f"
    src.write_bytes(data)
    store = BlockStore(tmp_path, Index(tmp_path / "i.sqlite"))
    cls = lookup("ec-2+1")
    result = ingest.add_file(store, src, cls, segment_size=65536, workers=3, convergence_secret=b"s")
    manifest, blocks = encode_bytes(data, result.read_cap.key, cls.coding, 65536)
    assert result.manifest == manifest
    assert all(store.get(merkle.block_id(b)) == b for b in blocks)
