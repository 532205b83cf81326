"""Attack: tiny records. An outsider handshakes, announces one 16 MiB frame and sends its first
40,000 bytes in 1-byte Noise records (about 0.8 MB on the wire).

Bound: the daemon's CPU time grows by less than 3 s over the attack, a third peer's pings are
all answered (worst under 2 s) throughout, either the daemon closes the connection or all the
records are taken, and the daemon still serves a fresh peer afterwards.
"""

import os
import time
from collections.abc import Callable

from peercloud.wire import messages as m

from ..daemons import Daemon
from .hostile import (
    ATTACKER,
    Findings,
    Hostile,
    MiB,
    PeerClosed,
    Watcher,
    address_of,
    closed_reason,
    cpu_seconds,
    frame_head,
    handshake_seconds,
    killed_if_stuck,
    records,
    wait_quiet,
)

RECORDS = 40_000
PAYLOAD = 16 * MiB
CPU_BOUND = 3.0


def test_one_byte_records_of_a_16_mib_frame(daemons: Callable[..., Daemon]) -> None:
    d = daemons("target")
    address, pid = address_of(d), d.proc.pid
    f = Findings("tiny-records")
    with killed_if_stuck(d, address), Watcher(d) as watcher, Hostile(address, source=ATTACKER) as h:
        head = frame_head(m.BlockData(1, os.urandom(32)), PAYLOAD)
        wire = records(h.conn, head + bytes(RECORDS - len(head)), 1)
        f.figure("wire_bytes", len(wire))
        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        outcome = "all records taken"
        try:
            h.send(wire, timeout=30)
        except PeerClosed:
            outcome = "closed by the daemon while sending"
        except TimeoutError:
            outcome = "stalled: the daemon stopped reading"
        quiet = wait_quiet(pid, timeout=30)
        busy = time.monotonic() - start
        cpu = cpu_seconds(pid) - cpu_before
        closed = h.wait_closed(0.5)
        f.figure("outcome", outcome)
        f.figure("daemon_closed", closed)
        if h.closed_at is not None:
            f.figure("closed_after_s", round(h.closed_at - start, 2))
        f.figure("close_reason", closed_reason(d, h.peer_id))
        f.figure("cpu_s", round(cpu, 2))
        f.figure("busy_s", round(busy, 2))
        watcher.stop()
        f.figure("watcher", str(watcher.report))
        f.require(outcome != "stalled: the daemon stopped reading", "the daemon neither read the records nor closed")
        f.require(quiet, f"the daemon was still busy {busy:.0f} s after the attack began")
        f.require(cpu < CPU_BOUND, f"the daemon spent {cpu:.2f} CPU seconds (bound {CPU_BOUND} s)")
        f.extend(watcher.problems())
        try:
            f.figure("fresh_handshake_s", round(handshake_seconds(address, timeout=5), 3))
            f.figure("node_status", d.json("status", "--node")["peer_id"] == d.peer_id)
        except Exception as e:
            f.require(False, f"the daemon did not serve a fresh peer afterwards: {e!r}")
        f.check()
