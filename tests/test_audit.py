"""Audits over real sockets: only blocks that answered a challenge count, and a missing one fails the claim."""

import asyncio
import os
from pathlib import Path

from peercloud.cloud.classes import DEFAULT_CLASSES
from peercloud.cloud.ledger import bitmap_from_indexes
from peercloud.content import merkle
from peercloud.errors import NotFoundError
from peercloud.identity import Identity
from peercloud.net.link import Address, PeerLink, dial, listen
from peercloud.node import ingest
from peercloud.node.auditor import AUDIT_BATCH, audit
from peercloud.store.blockstore import BlockStore
from peercloud.store.index import Holding, Index
from peercloud.wire import messages as m

HELLO = m.Hello(m.PROTOCOL_VERSION, ("audit",), "test")
BLOCKS = AUDIT_BATCH + 8


async def holder_and_link(tmp_path: Path, dropped: set[int]) -> tuple[PeerLink, ingest.AddResult, asyncio.Server]:
    """A holder on loopback answering audits from a real store, minus the `dropped` blocks."""
    store = BlockStore(tmp_path, Index(tmp_path / "index.sqlite"))
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(BLOCKS * 64 * 1024))
    added = ingest.add_file(store, src, DEFAULT_CLASSES["replica-1"], segment_size=64 * 1024, workers=2)
    blocks = added.manifest.blocks()
    gone = {blocks[i][2] for i in dropped}

    async def on_request(link: PeerLink, msg: m.Message) -> None:
        assert isinstance(msg, m.Audit)
        try:
            if msg.block in gone:
                raise NotFoundError("dropped")
            proof = merkle.prove(store.get(msg.block), msg.leaf)
        except NotFoundError:
            await link.answer(msg.id, m.Error(msg.id, "not_found", "block not held here"))
            return
        await link.answer(msg.id, m.Proof(msg.id, msg.block, msg.leaf, proof.path), proof.leaf)

    holder = Identity.generate()
    server = await listen("127.0.0.1", 0, holder, HELLO, on_request)
    port = server.sockets[0].getsockname()[1]
    link = await dial(Address("127.0.0.1", port), Identity.generate(), HELLO, on_request, holder.peer_id)
    return link, added, server


def claim(total: int, confirmed: set[int] | None = None) -> Holding:
    return Holding(
        b"p" * 32,
        bitmap_from_indexes(total, range(total)),
        1.0,
        bitmap_from_indexes(total, confirmed or ()),
        None,
        None,
    )


async def test_an_honest_claim_counts_only_what_was_challenged_then_all(tmp_path: Path) -> None:
    link, added, server = await holder_and_link(tmp_path, set())
    try:
        total = len(added.manifest.blocks())
        verdict, proved = await audit(link, added.manifest, claim(total))
        # The old rule counted the whole claim after 4 samples; now only the challenged blocks.
        assert verdict is True and len(proved) == AUDIT_BATCH < total
        verdict, more = await audit(link, added.manifest, claim(total, proved))
        assert verdict is True and proved | more == set(range(total))
    finally:
        link.close()
        server.close()


async def test_a_holder_missing_a_tenth_fails_and_never_counts_a_missing_block(tmp_path: Path) -> None:
    dropped = set(range(0, BLOCKS, 10))  # 10 % of the blocks
    link, added, server = await holder_and_link(tmp_path, dropped)
    try:
        total = len(added.manifest.blocks())
        proved: set[int] = set()
        failures = 0
        for _ in range(6):
            verdict, got = await audit(link, added.manifest, claim(total, proved))
            assert not got & dropped
            if verdict is False:
                failures += 1
                proved = set()  # a failed claim counts for nothing
            else:
                proved |= got
        assert failures >= 5  # 32 of 40 blocks sampled: a missing one is almost always hit
        assert not proved & dropped
    finally:
        link.close()
        server.close()
