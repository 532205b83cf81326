"""Attack: a client that stops reading. An outsider handshakes with a tiny receive buffer and,
never reading a byte, sends 5,000 Audit requests and 2,000 GetBlock requests for a 1 MiB block
the daemon holds (each proof answer carries a 64 KiB leaf, each block answer 1 MiB).

Bound: the daemon's RSS grows by less than 100 MiB, a third peer's pings are all answered
(worst under 2 s), and after the client disconnects the daemon serves a fresh peer and its API.
"""

import time
from collections.abc import Callable
from pathlib import Path

from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.wire import messages as m

from ..daemons import Daemon
from .hostile import (
    ATTACKER,
    Findings,
    Hostile,
    MiB,
    PeerClosed,
    RssSampler,
    Watcher,
    address_of,
    closed_reason,
    cpu_seconds,
    handshake_seconds,
    killed_if_stuck,
    mib,
    rss_bytes,
    wait_quiet,
)

AUDITS = 5_000
GETS = 2_000
RSS_BOUND = 100 * MiB
BATCH = 100  # requests per write
PAUSE = 0.02  # between writes: 5,000 requests a second, a quarter of the rate limit


def a_block_of(d: Daemon, object_id: str) -> tuple[bytes, int]:
    """The first block of an object the daemon stored, and its leaf count (read from its manifest file)."""
    data = (d.home / "blocks" / object_id[:2] / object_id).read_bytes()
    assert merkle.block_id(data).hex() == object_id
    manifest = Manifest.decode(data)
    return manifest.block(0, 0), merkle.leaf_count(manifest.share_size(0))


def test_client_that_never_reads(daemons: Callable[..., Daemon], make_file: Callable[..., Path]) -> None:
    d = daemons("target")
    added = d.json("add", str(make_file(4 * MiB, name="held.bin")))
    block, leaves = a_block_of(d, added["object_id"])
    address, pid = address_of(d), d.proc.pid
    f = Findings("stop-reading")
    with killed_if_stuck(d, address), Watcher(d) as watcher:
        time.sleep(0.5)
        sampler = RssSampler(pid)
        cpu_before = cpu_seconds(pid)
        h = Hostile(address, source=ATTACKER, rcvbuf=4096)
        try:
            requests: list[m.Message] = [m.Audit(i, block, i % leaves) for i in range(1, AUDITS + 1)]
            requests += [m.GetBlock(AUDITS + i, block) for i in range(1, GETS + 1)]
            start = time.monotonic()
            outcome = "all requests taken"
            try:
                for i in range(0, len(requests), BATCH):  # paced, so most find a free slot of the 256
                    h.send_frames(requests[i : i + BATCH], timeout=20)
                    time.sleep(PAUSE)
            except PeerClosed:
                outcome = "closed by the daemon while sending"
            except TimeoutError:
                outcome = "the daemon stopped reading"
            f.figure("outcome", outcome)
            f.figure("send_s", round(time.monotonic() - start, 2))
            quiet = wait_quiet(pid, timeout=20)
            time.sleep(1.0)  # answers keep queueing, if they do, a little after the CPU calms down
            f.figure("settled_s", round(time.monotonic() - start, 2))
            f.figure("cpu_s", round(cpu_seconds(pid) - cpu_before, 2))
            f.figure("rss_with_client", mib(rss_bytes(pid)))
            f.figure("daemon_bytes_out", mib(d.json("status", "--node")["bytes_out"]))
            f.require(quiet, "the daemon was still busy 20 s after the requests")
        finally:
            h.close()
        f.figure("close_reason", closed_reason(d, h.peer_id))
        time.sleep(1.0)
        peak = sampler.stop()
        f.figure("rss_before", mib(sampler.start))
        f.figure("rss_peak", mib(peak))
        f.figure("rss_after_disconnect", mib(rss_bytes(pid)))
        f.require(peak - sampler.start < RSS_BOUND, f"RSS grew by {mib(peak - sampler.start)} (bound {mib(RSS_BOUND)})")
        try:
            f.figure("fresh_handshake_s", round(handshake_seconds(address, timeout=5), 3))
            f.figure("node_status", d.json("status", "--node")["peer_id"] == d.peer_id)
        except Exception as e:
            f.require(False, f"the daemon did not serve afterwards: {e!r}")
    f.figure("watcher", str(watcher.report))
    f.extend(watcher.problems())
    f.check()
