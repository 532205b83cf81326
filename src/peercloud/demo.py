"""`peercloud demo`: a narrated tour on a throw-away node, running the real CLI as a user would."""

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)


def _run(home: Path, *args: str, show: bool = True) -> str:
    """Run the CLI in the demo folder (so paths stay short) and echo it like a terminal session."""
    shown = " ".join(shlex.quote(a) for a in args)
    if show:
        console.print(f"[bold cyan]$ peercloud {shown}[/bold cyan]")
    proc = subprocess.run(
        [sys.executable, "-m", "peercloud", "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=home.parent,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peercloud {shown} failed:\n{proc.stderr}")
    if show and "--json" not in args:
        console.print(proc.stdout.rstrip())
    return proc.stdout


def _sample(path: Path) -> None:
    """A file that is partly text and partly random, several segments long."""
    with open(path, "wb") as f:
        f.write(b"peercloud demo file\n" * 1000)
        f.write(os.urandom(5 * 1024 * 1024 + 4321))


def run() -> int:
    """Run the tour; returns an exit code."""
    with tempfile.TemporaryDirectory(prefix="peercloud-demo-") as tmp:
        work = Path(tmp)
        home = work / "node"
        console.rule("peercloud demo: one node, two storage classes")
        console.print("Create a throw-away node (its key, config, index and block folder):")
        _run(home, "init")
        sample = work / "sample.bin"
        _sample(sample)
        digest = hashlib.sha256(sample.read_bytes()).hexdigest()
        console.print(f"\nA sample file of {sample.stat().st_size} bytes (sha256 {digest[:16]}…).")
        console.print("Add it as 3 full replicas (one block per segment; later peers hold the copies):")
        replicated = json.loads(_run(home, "add", sample.name, "--class", "replica-3", "--json"))
        console.print(f"  object {replicated['object_id'][:16]}…, read cap {replicated['read_cap'][:24]}…")
        console.print("Add it again, erasure-coded 2+1 (any 2 of 3 shares rebuild each segment):")
        coded = json.loads(_run(home, "add", sample.name, "--class", "ec-2+1", "--json"))
        console.print(f"  object {coded['object_id'][:16]}…: a different key, so a different object")
        console.print("\nWhat the node holds:")
        _run(home, "ls")
        console.print("\nThe erasure-coded object's manifest:")
        _run(home, "info", coded["object_id"][:12])
        console.print("\nGet both back with their read caps; every block is verified on the way:")
        for added in (replicated, coded):
            out = work / f"back-{added['class']}.bin"
            _run(home, "get", added["read_cap"], "-o", out.name)
            same = hashlib.sha256(out.read_bytes()).hexdigest() == digest
            console.print(f"  {out.name}: {'identical to the original' if same else 'DIFFERENT'}")
            if not same:
                return 1
        console.print("\nCheck every stored block against its ID:")
        _run(home, "fsck")
        console.rule("demo done; the throw-away node is deleted")
    return 0
