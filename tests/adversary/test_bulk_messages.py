"""Attack: the bulk inventory and catalog messages from an outsider. It sends `haves` batches
naming 20,000 made-up objects, `have_query` notices asking about 20,000 random IDs, a
`catalog_heads` of the wrong size and a `catalog_want` for the node's own log.

Bound: the index grows by less than 1 MB (made-up objects are never recorded), the catalog is
never served to a non-member (`catalog_want` refused), malformed heads close at most the
attacker's own link, and a third peer's pings are answered throughout.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

from peercloud.identity import PeerId
from peercloud.wire import batches
from peercloud.wire import messages as m

from ..daemons import Daemon
from .hostile import ATTACKER, Findings, Hostile, MiB, Watcher, address_of, index_bytes, killed_if_stuck, mib

OBJECTS = 20_000


def test_bulk_messages_from_an_outsider(daemons: Callable[..., Daemon], make_file: Callable[..., Path]) -> None:
    d = daemons("target")
    d.cli("cloud", "create", "lab")
    d.json("add", str(make_file(100_000, name="known.bin")))
    address = address_of(d)
    f = Findings("bulk-messages")
    before = index_bytes(d.home)
    with killed_if_stuck(d, address), Watcher(d) as watcher:
        with Hostile(address, source=ATTACKER) as h:
            made_up = [batches.HaveEntry(os.urandom(32), b"\xff" * 4, False) for _ in range(OBJECTS)]
            h.send_frames([m.Haves(packed) for packed in batches.pack_haves(made_up)])
            ids = os.urandom(32 * OBJECTS)
            step = 32 * 2000
            h.send_frames([m.HaveQuery(ids[i : i + step]) for i in range(0, len(ids), step)])
            answer = h.call(m.CatalogWant(h.conn.new_id(), PeerId.parse(d.peer_id).public_key, 0))
            f.figure("catalog_want", answer)
            f.require(isinstance(answer, m.Error) and answer.code == "refused", "catalog_want answered to an outsider")
            f.figure("ping_after_flood_s", round(h.ping(), 3))
            h.send_frames([m.CatalogHeads(b"\0" * 100)])
            h.pump(1.0)
        time.sleep(1.0)
        grown = index_bytes(d.home) - before
        f.figure("index_growth", mib(grown))
        f.require(grown < 1 * MiB, f"the index grew by {mib(grown)}")
        f.figure("node_status", d.json("status", "--node")["peer_id"] == d.peer_id)
    f.figure("watcher", str(watcher.report))
    f.extend(watcher.problems())
    f.check()
