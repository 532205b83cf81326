"""Attack: connection flood. 300 sockets connect to the peer port and never send a byte: 20 from
each of 127.0.0.2..127.0.0.11 and 100 more from 127.0.0.12, all held open for about 3 s.

Bound: the daemon's RSS grows by less than 40 MiB, a third peer connected before the flood keeps
getting every pong (worst under 2 s), and once the flood's sockets close a fresh handshake
succeeds within 2 s.
"""

import time
from collections.abc import Callable

from ..daemons import Daemon
from .hostile import (
    Findings,
    MiB,
    RssSampler,
    Watcher,
    address_of,
    closed_by_peer,
    handshake_seconds,
    idle_sockets,
    killed_if_stuck,
    loopback_sources,
    mib,
)

SPREAD = 20  # sockets from each of ten source addresses
FROM_ONE = 100  # sockets from one more address
HOLD = 3.0
RSS_BOUND = 40 * MiB


def test_idle_connection_flood(daemons: Callable[..., Daemon]) -> None:
    d = daemons("target")
    address, pid = address_of(d), d.proc.pid
    f = Findings("connection-flood")
    with killed_if_stuck(d, address):
        with Watcher(d) as watcher:
            time.sleep(0.5)  # the watcher's link is settled before the flood
            sampler = RssSampler(pid)
            sources = [a for a in loopback_sources(10) for _ in range(SPREAD)] + ["127.0.0.12"] * FROM_ONE
            start = time.monotonic()
            sockets, failed = idle_sockets(address, sources)
            try:
                f.figure("connect_s", round(time.monotonic() - start, 2))
                time.sleep(HOLD)
                dropped = sum(closed_by_peer(s) for s in sockets)
            finally:
                for s in sockets:
                    s.close()
            peak = sampler.stop()
            f.figure("connected", len(sockets))
            f.figure("connect_failed", failed)
            f.figure("closed_by_daemon_during_hold", dropped)
            f.figure("rss_before", mib(sampler.start))
            f.figure("rss_peak", mib(peak))
            f.require(
                peak - sampler.start < RSS_BOUND,
                f"RSS grew by {mib(peak - sampler.start)} (bound {mib(RSS_BOUND)})",
            )
            try:
                fresh = handshake_seconds(address, timeout=2.0)
            except Exception as e:
                f.require(False, f"no fresh handshake within 2 s after the flood: {e!r}")
            else:
                f.figure("fresh_handshake_s", round(fresh, 3))
                f.require(fresh < 2.0, f"a fresh handshake took {fresh:.2f} s after the flood (bound 2 s)")
        f.figure("watcher", str(watcher.report))
        f.extend(watcher.problems())
        f.check()
