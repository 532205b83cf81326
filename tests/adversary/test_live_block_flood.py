"""Attack: a flood of block requests to a node whose get is in progress. Such a node serves the
blocks of each segment it wrote, re-created from its partial file (read, encrypt, erasure-code,
hash): the dearest answer a peer can ask for. An outsider asks for every block of the object
over and over, as fast as it can while still reading.

Bound: the node reads at most 8 blocks at once per link and answers at most 256 requests in
flight (the rest get `busy`); every block it serves checks against its ID; its RSS grows by less
than 100 MiB; a third peer's pings are answered throughout; the get itself still ends as it
must (here: failed, keeping what it verified, since its only source was killed).
"""

import random
import time
from collections.abc import Callable
from pathlib import Path

from peercloud.content import merkle
from peercloud.content.manifest import Manifest
from peercloud.wire import connection as c
from peercloud.wire import messages as m

from ..conftest import run_cli_async
from ..daemons import Daemon, partial_mib, wait_for
from ..test_daemon import link
from .hostile import ATTACKER, Findings, Hostile, MiB, RssSampler, Watcher, address_of, killed_if_stuck, mib

FLOOD_SECONDS = 4.0
BATCH = 100


def test_block_flood_on_a_get_in_progress(
    daemons: Callable[..., Daemon], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    a, b = daemons("a"), daemons("b")
    added = a.json("add", str(make_file(200 * MiB, name="big.bin")), "--class", "replica-1")
    oid = added["object_id"]
    manifest = Manifest.decode((a.home / "blocks" / oid[:2] / oid).read_bytes())
    blocks = [bid for _, _, bid in manifest.blocks()]
    link(b, a)
    out = tmp_path / "out.bin"
    getter = run_cli_async(b.home, "get", added["read_cap"], "-o", str(out))
    wait_for(lambda: partial_mib(out) >= 30 or getter.poll() is not None, what="the get to be under way")
    a.kill()  # b's get now waits for a source, serving the segments it wrote meanwhile
    assert getter.poll() is None, "the get ended before the flood could start"
    address, pid = address_of(b), b.proc.pid
    f = Findings("live-block-flood")
    with killed_if_stuck(b, address), Watcher(b) as watcher:
        sampler = RssSampler(pid)
        start = time.monotonic()
        sent = 0
        with Hostile(address, source=ATTACKER) as h:
            while time.monotonic() - start < FLOOD_SECONDS and h.closed_at is None:
                for bid in random.choices(blocks, k=BATCH):
                    h.conn.request(m.GetBlock(h.conn.new_id(), bid), time.monotonic(), timeout=60)
                sent += BATCH
                h.flush()
                h.pump(0.05)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and h.closed_at is None:
                if sum(isinstance(e, c.Response | c.Timeout) for e in h.events) >= sent:
                    break
                h.pump(0.2)
            answers = [e for e in h.events if isinstance(e, c.Response)]
            closed = h.closed_at is not None
        served = [e for e in answers if isinstance(e.message, m.BlockData)]
        busy = sum(isinstance(e.message, m.Error) and e.message.code == "busy" for e in answers)
        wrong = sum(merkle.block_id(e.payload) != e.message.block for e in served if isinstance(e.message, m.BlockData))
        peak = sampler.stop()
        f.figure("requests", sent)
        f.figure("answered", len(answers))
        f.figure("served", len(served))
        f.figure("busy", busy)
        f.figure("rss_growth", mib(peak - sampler.start))
        f.require(not closed, "the node closed a peer that only asked for blocks within its limits")
        f.require(len(answers) == sent, f"only {len(answers)} of {sent} requests were answered")
        f.require(len(served) >= 1, "a get in progress served none of the blocks it wrote")
        f.require(wrong == 0, f"{wrong} served blocks do not match their IDs")
        f.require(peak - sampler.start < 100 * MiB, f"RSS grew by {mib(peak - sampler.start)}")
    f.extend(watcher.problems())
    f.check()
    _, stderr = getter.communicate(timeout=60)
    assert getter.returncode != 0, "the get finished without its only source"
    assert "kept in" in stderr, f"the failed get did not say what it kept: {stderr[-300:]}"
    assert b.cli("fsck").returncode == 0
