"""Peers' claims in the index: only known objects, outsiders capped and expiring."""

import os
import time
from pathlib import Path

from peercloud.store.holdings import OUTSIDER_ROWS
from peercloud.store.index import Claim, Index, OwnedEntry


def test_claims_on_unknown_objects_are_dropped_and_outsiders_are_capped(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    known = [os.urandom(32) for _ in range(OUTSIDER_ROWS + 10)]
    owner = os.urandom(32)
    index.put_own([OwnedEntry(oid, owner, 1, "replica-3", 1, 1, 1, 5000, 0.0, 3003) for oid in known])
    outsider, member = os.urandom(32), os.urandom(32)
    made_up = [Claim(os.urandom(32), b"\xff" * 1024) for _ in range(500)]
    assert index.set_holdings(outsider, made_up, member=False) == 0
    assert index.set_holdings(member, made_up, member=True) == 0
    claims = [Claim(oid, b"\x80") for oid in known]
    assert index.set_holdings(outsider, claims, member=False) == OUTSIDER_ROWS
    assert index.set_holdings(member, claims, member=True) == len(known)
    # An outsider's rows go once it has been away long enough; members' stay.
    assert index.prune_holdings({member}, time.time() + 1) == OUTSIDER_ROWS
    assert len(index.peer_holdings(member)) == len(known) and not index.peer_holdings(outsider)
    index.close()
