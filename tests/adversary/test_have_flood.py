"""Attack: HAVE flood. An outsider announces 1,000 made-up objects (random 32-byte IDs) with
32 KiB bitmaps, the largest piece a HAVE may carry, and then 1,000 more.

Bound: the daemon's index.sqlite plus its WAL grows by less than 2 MB, and stays so after a
restart; a third peer's pings are all answered (worst under 2 s); and an outsider's HAVE for an
object the daemon does know (it added it) still shows in `status OBJ --json` among the holders,
with member false (proved or not).
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

from peercloud.cloud.ledger import bitmap_from_indexes
from peercloud.wire import messages as m

from ..daemons import Daemon
from .hostile import (
    ATTACKER,
    Findings,
    Hostile,
    PeerClosed,
    Watcher,
    address_of,
    closed_reason,
    index_bytes,
    killed_if_stuck,
    mib,
    poll,
)

FLOOD = 1_000
DISK_BOUND = 2_000_000


def flood(h: Hostile, count: int) -> float:
    """Announce `count` made-up objects, then wait until the daemon has read them all (a ping)."""
    start = time.monotonic()
    bitmap = b"\xff" * m.HAVE_PIECE
    for _ in range(count // 100):  # in batches, so a daemon that closes on us is seen early
        h.send_frames([m.Have(os.urandom(32), bitmap) for _ in range(100)], timeout=30)
    h.ping(timeout=30)
    return time.monotonic() - start


def test_have_flood_from_an_outsider(daemons: Callable[..., Daemon], make_file: Callable[..., Path]) -> None:
    d = daemons("target")
    d.cli("cloud", "create", "lab", "--offer", "1GiB")
    added = d.json("add", str(make_file(3_000_000, name="known.bin")))
    oid, total = added["object_id"], added["blocks"] - 1
    address = address_of(d)
    f = Findings("have-flood")
    time.sleep(1.0)
    before = index_bytes(d.home)
    f.figure("index_before", mib(before))
    with killed_if_stuck(d, address), Watcher(d) as watcher:
        flooder = Hostile(address, source=ATTACKER)
        try:
            for burst in (1, 2):
                try:
                    f.figure(f"burst{burst}_s", round(flood(flooder, FLOOD), 2))
                except (PeerClosed, TimeoutError) as e:
                    f.figure(f"burst{burst}", f"ended: {type(e).__name__}")
                    break
                finally:
                    f.figure(f"index_after_burst{burst}", mib(index_bytes(d.home)))
            f.figure("flooder_close_reason", closed_reason(d, flooder.peer_id))
        finally:
            flooder.close()
        grown = index_bytes(d.home) - before
        f.require(grown < DISK_BOUND, f"the index grew by {mib(grown)} (bound {mib(DISK_BOUND)})")
        # An honest outsider's claim on an object the daemon knows is still recorded.
        with Hostile(address, source="127.0.0.3") as honest:
            honest.send_frame(m.Have(bytes.fromhex(oid), bitmap_from_indexes(total, range(total))))
            honest.ping()

            def row() -> dict[str, object] | None:
                holders = d.json("status", oid)["holders"]
                return next((x for x in holders if x["peer_id"] == honest.peer_id), None)

            try:
                poll(lambda: row() is not None, 10, "the outsider's HAVE to show", every=0.2)
            except AssertionError:
                f.require(False, "an outsider's HAVE for an object the daemon knows is not among its holders")
            else:
                shown = row()
                assert shown is not None
                f.figure("outsider_row", {k: shown[k] for k in ("member", "percent", "confirmed", "online")})
                f.require(shown["member"] is False, f"the outsider is shown as a member: {shown}")
    f.figure("watcher", str(watcher.report))
    f.extend(watcher.problems())
    port = d.port
    assert d.stop() == 0
    again = daemons("target", port)
    time.sleep(1.0)
    after = index_bytes(again.home)
    f.figure("index_after_restart", mib(after))
    f.require(after - before < DISK_BOUND, f"after a restart the index is {mib(after - before)} larger (bound 2 MB)")
    f.check()
