"""Attack: an audit flood from a peer that reads its answers. An outsider sends 3,000 storage
challenges for a block the daemon holds, as fast as it can while still reading.

Bound: audits from peers outside the cloud are answered at most at 10 per second (plus a burst
of 20); the rest get `busy` at once, so the daemon reads at most that many blocks for it; its
CPU time grows by less than 5 s, its RSS by less than 60 MiB, and a third peer's pings are
answered throughout.
"""

import time
from collections.abc import Callable
from pathlib import Path

from peercloud.wire import connection as c
from peercloud.wire import messages as m

from ..daemons import Daemon
from .hostile import (
    ATTACKER,
    Findings,
    Hostile,
    MiB,
    RssSampler,
    Watcher,
    address_of,
    cpu_seconds,
    killed_if_stuck,
    mib,
)
from .test_stop_reading import a_block_of

AUDITS = 3_000
BATCH = 200


def test_audit_flood_is_rate_limited(daemons: Callable[..., Daemon], make_file: Callable[..., Path]) -> None:
    d = daemons("target")
    added = d.json("add", str(make_file(2 * MiB, name="held.bin")))
    block, leaves = a_block_of(d, added["object_id"])
    address, pid = address_of(d), d.proc.pid
    f = Findings("audit-flood")
    with killed_if_stuck(d, address), Watcher(d) as watcher:
        time.sleep(0.5)
        sampler = RssSampler(pid)
        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        with Hostile(address, source=ATTACKER) as h:
            for first in range(0, AUDITS, BATCH):
                for i in range(first, first + BATCH):
                    h.conn.request(m.Audit(h.conn.new_id(), block, i % leaves), time.monotonic(), timeout=60)
                h.flush()
                h.pump(0.05)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                answered = [e for e in h.events if isinstance(e, c.Response)]
                if len(answered) >= AUDITS or h.closed_at is not None:
                    break
                h.pump(0.2)
            elapsed = time.monotonic() - start
            answers = [e.message for e in h.events if isinstance(e, c.Response)]
        proofs = sum(isinstance(a, m.Proof) for a in answers)
        busy = sum(isinstance(a, m.Error) and a.code == "busy" for a in answers)
        f.figure("answered", len(answers))
        f.figure("proofs", proofs)
        f.figure("busy", busy)
        f.figure("seconds", round(elapsed, 2))
        f.figure("cpu_s", round(cpu_seconds(pid) - cpu_before, 2))
        peak = sampler.stop()
        f.figure("rss_growth", mib(peak - sampler.start))
        f.require(len(answers) == AUDITS, f"only {len(answers)} of {AUDITS} challenges were answered")
        f.require(proofs <= 20 + 10 * elapsed + 10, f"{proofs} proofs in {elapsed:.1f} s: the rate limit did not hold")
        f.require(busy >= AUDITS - proofs - 10, "challenges over the rate were not answered busy")
        f.require(cpu_seconds(pid) - cpu_before < 5.0, "the flood cost the daemon more than 5 CPU seconds")
        f.require(peak - sampler.start < 60 * MiB, f"RSS grew by {mib(peak - sampler.start)}")
    f.extend(watcher.problems())
    f.check()
