"""Block IDs: BLAKE3 Merkle roots over fixed-size leaves, with proofs for any one leaf.

The tree has the shape of RFC 9162 (Certificate Transparency): a node over n leaves splits at
the largest power of two below n. Instead of RFC 9162's one-byte 0x00/0x01 prefixes, leaves and
interior nodes are hashed in BLAKE3's keyed mode under two fixed keys: the same domain
separation, without shifting leaf data off BLAKE3's 1 KiB chunk boundaries (which costs a third
of the hashing speed). A holder can therefore prove it still has a block by sending one leaf and its audit
path; the verifier needs only the block ID and the block size.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import blake3

LEAF_SIZE = 64 * 1024
HASH_SIZE = 32
_LEAF_KEY = blake3.blake3(b"peercloud merkle leaf v1").digest()
_NODE_KEY = blake3.blake3(b"peercloud merkle node v1").digest()


def leaf_count(size: int) -> int:
    """Leaves in a block of `size` bytes; an empty block still has one (empty) leaf."""
    return max(1, -(-size // LEAF_SIZE))


def _hash_leaf(leaf: bytes | memoryview) -> bytes:
    return blake3.blake3(leaf, key=_LEAF_KEY).digest()


def _hash_node(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(left + right, key=_NODE_KEY).digest()


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _root(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return _hash_node(_root(hashes[:k]), _root(hashes[k:]))


def leaf_hashes(data: bytes | memoryview) -> list[bytes]:
    """Hash each leaf of a block (the expensive part, shared by root and proof)."""
    view = memoryview(data)
    return [_hash_leaf(view[i * LEAF_SIZE : (i + 1) * LEAF_SIZE]) for i in range(leaf_count(len(view)))]


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root over small records (one leaf each, at least one): what a signed batch of
    catalog entries commits to, so one signature covers hundreds of entries."""
    return _root([_hash_leaf(leaf) for leaf in leaves])


def block_id(data: bytes | memoryview) -> bytes:
    """The 32-byte content address of a block: what every peer checks a block against."""
    return _root(leaf_hashes(data))


@dataclass(frozen=True)
class LeafProof:
    """One leaf of a block plus the sibling hashes linking it to the block ID (bottom-up)."""

    index: int
    leaf: bytes
    path: tuple[bytes, ...]


def prove(data: bytes | memoryview, index: int) -> LeafProof:
    """Build the proof that leaf `index` belongs to this block, to answer a storage audit."""
    hashes = leaf_hashes(data)
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf {index} out of range (block has {len(hashes)})")
    lo, hi, i = 0, len(hashes), index
    # Walk from the root down, collecting the sibling subtree root at each split.
    siblings: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if i - lo < k:
            siblings.append(_root(hashes[lo + k : hi]))
            hi = lo + k
        else:
            siblings.append(_root(hashes[lo : lo + k]))
            lo = lo + k
    view = memoryview(data)
    leaf = bytes(view[index * LEAF_SIZE : (index + 1) * LEAF_SIZE])
    return LeafProof(index, leaf, tuple(reversed(siblings)))


def verify_proof(root: bytes, size: int, proof: LeafProof) -> bool:
    """Check a leaf proof against a block ID and block size, without the rest of the block."""
    n = leaf_count(size)
    if not 0 <= proof.index < n:
        return False
    expected_len = min(LEAF_SIZE, size - proof.index * LEAF_SIZE) if size else 0
    if len(proof.leaf) != expected_len:
        return False
    # Recompute the splits top-down to know, per level, which side the sibling is on.
    sides: list[bool] = []  # True when our subtree is the left child
    lo, hi, i = 0, n, proof.index
    while hi - lo > 1:
        k = _split(hi - lo)
        left = i - lo < k
        sides.append(left)
        if left:
            hi = lo + k
        else:
            lo = lo + k
    if len(sides) != len(proof.path):
        return False
    node = _hash_leaf(proof.leaf)
    for sibling, left in zip(proof.path, reversed(sides), strict=True):
        if len(sibling) != HASH_SIZE:
            return False
        node = _hash_node(node, sibling) if left else _hash_node(sibling, node)
    return node == root
