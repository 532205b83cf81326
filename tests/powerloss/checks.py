"""What every power-loss scenario checks after the machine comes back, read outside node code
where it can be: the index, the block files, the node's own fsck, and a daemon start."""

import sqlite3
import subprocess
import sys
from pathlib import Path

from peercloud.cloud.document import SignedDoc
from peercloud.content import merkle
from peercloud.node.home import NodeHome
from peercloud.node.local import LocalNode

from ..conftest import CLI_ENV
from ..daemons import start_daemon
from .harness import REPO

CUTS_DEFAULT = 8


def cli(home: Path, *args: str, site: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI (with one sync site taken out when `site` is given)."""
    command = [sys.executable, "-m", "tests.powerloss.mutant", site] if site else [sys.executable, "-m", "peercloud"]
    return subprocess.run(
        [*command, "--home", str(home), *args], capture_output=True, text=True, env=CLI_ENV, cwd=REPO, timeout=120
    )


def _index_rows(home: Path, sql: str) -> list[tuple[bytes, ...]]:
    db = sqlite3.connect(f"file:{home / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return [tuple(bytes(c) if isinstance(c, bytes) else c for c in r) for r in db.execute(sql).fetchall()]
    finally:
        db.close()


def _whole(home: Path, bid: bytes, size: int) -> bool:
    path = home / "blocks" / bid.hex()[:2] / bid.hex()
    data = path.read_bytes() if path.exists() else b""
    return len(data) == size and merkle.block_id(data) == bid


def bad_blocks(home: Path) -> list[str]:
    """Blocks the index names whose file is gone, partial or wrong."""
    return [bid.hex() for bid, size in _index_rows(home, "SELECT id, size FROM blocks") if not _whole(home, bid, size)]


def durable_blocks(home: Path) -> set[bytes]:
    """Blocks the index names whose file is whole: what this node really has."""
    return {bid for bid, size in _index_rows(home, "SELECT id, size FROM blocks") if _whole(home, bid, size)}


def held_blocks(home: Path, object_id: bytes) -> set[bytes]:
    """Blocks this node keeps for the cloud for one object (its `holds` rows)."""
    rows = _index_rows(home, f"SELECT block_id FROM holds WHERE object_id = x'{object_id.hex()}'")
    return {r[0] for r in rows}


def member_of_cloud(home: Path, peer_id: str) -> bool:
    """True when the node's stored cloud document names it a member."""
    rows = _index_rows(home, "SELECT doc FROM cloud")
    if not rows:
        return False
    doc = SignedDoc.decode(rows[0][0]).doc
    return any(str(m.peer_id) == peer_id for m in doc.members)


def restart_checks(home: Path, sources: dict[str, bytes], expect: set[str], scratch: Path) -> None:
    """The node after a cut: blocks whole, fsck clean, objects whole, `expect`ed names listed, daemon up."""
    assert not bad_blocks(home), "the index names blocks the disk does not have whole"
    with LocalNode(NodeHome(home)) as node:
        report = node.fsck()
        assert not report.damaged, f"fsck after the cut: {report}"
        listed = {r.name: r for r in node.objects()}
        for name, record in listed.items():
            if name not in sources:
                continue  # held for the cloud, with no read key here: checked block by block
            out = scratch / f"back-{name}"
            out.unlink(missing_ok=True)
            node.get(record.object_id.hex(), out)
            assert out.read_bytes() == sources[name], f"{name} reads back different after the cut"
            out.unlink()
    missing = expect - set(listed)
    assert not missing, f"finished before the cut, gone after it: {missing}"
    assert start_daemon(home).stop() == 0


def init_home(root: Path) -> Path:
    """A backing folder with an initialized node home, all durable (written on the real disk)."""
    assert cli(root / "home", "init").returncode == 0
    return root
