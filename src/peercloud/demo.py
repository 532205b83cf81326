"""`peercloud demo`: three daemons on loopback share a file; every step is a real CLI command."""

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from peercloud.node.process import DaemonProcess, start_daemon

console = Console(highlight=False, soft_wrap=True)


def _run(name: str, home: Path, *args: str, show: bool = True) -> str:
    """Run the CLI against one node, echoed like a terminal session."""
    shown = " ".join(shlex.quote(a) for a in args)
    if show:
        console.print(f"[bold cyan]{name}$ peercloud {shown}[/bold cyan]")
    proc = subprocess.run(
        [sys.executable, "-m", "peercloud", "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=home.parent,
        env={**os.environ, "COLUMNS": str(max(console.width, 110))},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peercloud {shown} failed:\n{proc.stderr}")
    if show and "--json" not in args:
        console.print(proc.stdout.rstrip())
    return proc.stdout


def _sample(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(b"peercloud demo file\n" * 1000)
        f.write(os.urandom(24 * 1024 * 1024 + 4321))


def run() -> int:
    """Run the tour; returns an exit code."""
    with tempfile.TemporaryDirectory(prefix="peercloud-demo-") as tmp:
        work = Path(tmp)
        nodes: dict[str, DaemonProcess] = {}
        try:
            console.rule("peercloud demo: three peers on loopback")
            for name in ("alice", "bob", "carol"):
                nodes[name] = start_daemon(work / name)
                console.print(f"started {name}: {nodes[name].peer_id[:20]}… on {nodes[name].state['listen'][0]}")
            alice, bob, carol = (nodes[n] for n in ("alice", "bob", "carol"))
            console.print("\nBob and Carol learn Alice's address; Carol also knows Bob:")
            _run("bob", bob.home, "peers", "add", alice.address)
            _run("carol", carol.home, "peers", "add", alice.address)
            _run("carol", carol.home, "peers", "add", bob.address)
            sample = work / "holiday.mp4"
            _sample(sample)
            digest = hashlib.sha256(sample.read_bytes()).hexdigest()
            console.print(f"\nAlice adds a {sample.stat().st_size / 2**20:.0f} MiB file:")
            added = json.loads(_run("alice", alice.home, "add", sample.name, "--class", "replica-3", "--json"))
            console.print(f"  object {added['object_id'][:16]}…  read cap {added['read_cap'][:28]}…")
            console.print("\nBob pins it with the verify cap alone: he stores every block but cannot read it:")
            _run("bob", bob.home, "pin", added["verify_cap"])
            console.print("\nCarol gets it with the read cap, from Alice and Bob at once:")
            _run("carol", carol.home, "get", added["read_cap"], "-o", "carols-copy.mp4")
            same = hashlib.sha256((work / "carols-copy.mp4").read_bytes()).hexdigest() == digest
            console.print(f"  carol's copy is {'identical to' if same else 'DIFFERENT from'} alice's")
            console.print("\nCarol's peers, with traffic and round-trip times:")
            _run("carol", carol.home, "peers")
            console.print("\nWho holds what, as Carol sees it:")
            _run("carol", carol.home, "status", added["object_id"][:12])
            if not same:
                return 1
        finally:
            console.print("\nStopping the three daemons:")
            for name, d in nodes.items():
                code = d.stop()
                console.print(f"  {name} stopped ({'cleanly' if code == 0 else f'exit code {code}'})")
        console.rule("demo done; the throw-away nodes are deleted")
    return 0
