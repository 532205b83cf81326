"""Attack: handshakes that make a node send its whole inventory. Five outsiders connect at once
to a node holding 5,000 objects (the old code sent every HAVE synchronously on the loop for each
new link: 1.7 s per link at 20,000 objects, a third peer's ping rising from 1 ms to 1.9 s).

Bound: the watcher's pings are answered throughout (worst under 1 s), and every outsider still
receives the whole inventory, in batches (dozens of messages, not thousands).
"""

import os
import threading
import time
from collections.abc import Callable

from peercloud.store.index import Index
from peercloud.wire import batches
from peercloud.wire import connection as c
from peercloud.wire import messages as m

from ..daemons import Daemon
from .hostile import Findings, Hostile, Watcher, address_of, killed_if_stuck

OBJECTS = 5_000
OUTSIDERS = 5


def hold_many(home_index: Index, count: int) -> None:
    """Record `count` small objects as stored here, straight through the index (no block files)."""
    now = time.time()
    ids = [os.urandom(32) for _ in range(count)]
    blocks = [os.urandom(32) for _ in range(count)]
    home_index.add_blocks([(b, 4096) for b in blocks] + [(o, 300) for o in ids])
    with home_index.transaction() as db:
        db.executemany(
            "INSERT INTO objects (id, name, size, class, added_at, read_key)"
            " VALUES (?, '', 4000, 'replica-1', ?, NULL)",
            [(o, now) for o in ids],
        )
        db.executemany(
            "INSERT INTO object_blocks (object_id, segment, share, block_id) VALUES (?, ?, 0, ?)",
            [row for o, b in zip(ids, blocks, strict=True) for row in ((o, 0, b), (o, -1, o))],
        )


def test_new_links_get_the_inventory_without_stalling_the_node(daemons: Callable[..., Daemon]) -> None:
    d = daemons("target")
    port = d.port
    assert d.stop() == 0
    index = Index(d.home / "index.sqlite")
    try:
        hold_many(index, OBJECTS)
    finally:
        index.close()
    d = daemons("target", port)
    address = address_of(d)
    f = Findings("inventory-on-new-links")
    received: dict[int, tuple[int, int]] = {}

    def outsider(i: int) -> None:
        with Hostile(address, source=f"127.0.0.{20 + i}") as h:
            deadline = time.monotonic() + 30
            entries = messages = 0
            while time.monotonic() < deadline and entries < OBJECTS:
                h.pump(0.2)
                notices = [e.message for e in h.events if isinstance(e, c.Notice)]
                haves = [msg for msg in notices if isinstance(msg, m.Haves)]
                messages = len(haves)
                entries = sum(len(batches.unpack_haves(msg.entries)) for msg in haves)
            received[i] = (entries, messages)

    with killed_if_stuck(d, address), Watcher(d) as watcher:
        time.sleep(0.5)
        threads = [threading.Thread(target=outsider, args=(i,)) for i in range(OUTSIDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        time.sleep(0.5)
    f.figure("received", received)
    f.figure("watcher", str(watcher.report))
    for i in range(OUTSIDERS):
        entries, messages = received.get(i, (0, 0))
        f.require(entries == OBJECTS, f"outsider {i} got {entries} of {OBJECTS} objects")
        f.require(0 < messages < OBJECTS // 50, f"outsider {i} got them in {messages} messages")
    f.extend(watcher.problems(max_rtt=1.0))
    f.check()
