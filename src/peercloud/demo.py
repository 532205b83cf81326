"""`peercloud demo`: a five-peer cloud on loopback; every step is a real CLI command, narrated.

The peers found a cloud, join it by invite with site tags, store one file in `replica-3` and one
in `ec-2+1`, show the ledger, lose a peer, watch the object degrade and heal, and stop cleanly.
"""

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from peercloud.node.process import DaemonProcess, start_daemon

console = Console(highlight=False, soft_wrap=True)
PEERS = (("alice", "home"), ("bob", "home"), ("carol", "office"), ("dave", "office"), ("erin", "cloud"))
GRACE = "5s"  # repair after five seconds offline, so the tour does not wait ten minutes


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


def _say(line: str) -> None:
    console.print(f"\n[bold]▶ {line}[/bold]")


def _status(node: DaemonProcess, object_id: str) -> Any:
    return json.loads(_run("", node.home, "status", object_id, "--json", show=False))


def _wait(what: str, check: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _sample(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"peercloud demo file\n" * 1000)
        f.write(os.urandom(size))


def run() -> int:
    """Run the tour; returns an exit code."""
    with tempfile.TemporaryDirectory(prefix="peercloud-demo-") as tmp:
        work = Path(tmp)
        nodes: dict[str, DaemonProcess] = {}
        try:
            console.rule("peercloud demo: a five-peer cloud on loopback")
            _say("Five daemons start, each with its own key, store and port.")
            for name, _ in PEERS:
                nodes[name] = start_daemon(work / name)
                console.print(f"  {name}: {nodes[name].peer_id[:20]}… on {nodes[name].state['listen'][0]}")
            alice = nodes["alice"]
            _say("Alice founds the cloud 'family' and becomes its admin, offering 1 GiB at site=home.")
            _run("alice", alice.home, "cloud", "create", "family", "--offer", "1GiB", "--tag", "site=home")
            for name, site in PEERS[1:]:
                _say(f"Alice invites {name.title()}, who joins with the one-time token, at site={site}.")
                token = _run("alice", alice.home, "cloud", "invite", "--expires", "10m").strip().splitlines()[-1]
                _run(name, nodes[name].home, "cloud", "join", token, "--offer", "1GiB", "--tag", f"site={site}")
            erin = nodes["erin"]
            _say("Every member learns the signed membership by gossip; Erin's view:")
            _wait("all members online", lambda: all(x["online"] for x in _members(erin)) and len(_members(erin)) == 5)
            _run("erin", erin.home, "cloud", "members")
            _say(f"For the tour, Alice redefines replica-3 and ec-2+1 to repair after {GRACE} offline, spread by site.")
            _run("alice", alice.home, "class", "rm", "replica-3", show=False)
            _run("alice", alice.home, "class", "rm", "ec-2+1", show=False)
            _run(
                "alice",
                alice.home,
                "class",
                "add",
                "replica-3",
                "--replicas",
                "3",
                "--spread",
                "site",
                "--grace",
                GRACE,
            )
            _run("alice", alice.home, "class", "add", "ec-2+1", "--ec", "2+1", "--grace", GRACE)
            bob = nodes["bob"]
            movie, notes = work / "holiday.mp4", work / "notes.pdf"
            _sample(movie, 12 * 2**20)
            _sample(notes, 6 * 2**20)
            _say("Bob adds a video in replica-3 and a document in ec-2+1; add returns at once.")
            _run("bob", bob.home, "add", movie.name, "--class", "replica-3")
            _run("bob", bob.home, "add", notes.name, "--class", "ec-2+1")
            added = next(
                o for o in json.loads(_run("", bob.home, "ls", "--json", show=False)) if o["name"] == movie.name
            )
            oid = added["object_id"]
            added["read_cap"] = json.loads(_run("", bob.home, "info", oid, "--json", show=False))["read_cap"]
            _say("The reconciler places copies on members with room and a site not yet used; the ledger on Erin:")
            _wait("the video to be healthy", lambda: _status(erin, oid)["health"] == "healthy")
            _wait(
                "everything healthy",
                lambda: json.loads(_run("", erin.home, "status", "--json", show=False))["counts"]["healthy"] == 2,
            )
            _run("erin", erin.home, "status")
            _run("erin", erin.home, "status", oid[:12])
            status = _status(erin, oid)
            holders = [h["peer_id"] for h in status["holders"] if len(h["confirmed"]) == status["total_blocks"]]
            victim = next(n for n, d in nodes.items() if d.peer_id in holders and n not in ("erin", "alice"))
            _say(f"{victim.title()}, who holds a copy, goes offline; the video degrades:")
            nodes[victim].stop()
            _wait("the loss to show", lambda: _status(erin, oid)["health"] != "healthy")
            _run("erin", erin.home, "status", oid[:12])
            _say(f"After the {GRACE} grace period the cloud re-creates the copy on another member; healed:")
            _wait("repair", lambda: _status(erin, oid)["health"] == "healthy")
            _run("erin", erin.home, "status", oid[:12])
            carol = nodes["carol"] if victim != "carol" else nodes["dave"]
            _say("The video is still readable by anyone with its read cap, from the holders left:")
            _run("carol", carol.home, "get", added["read_cap"], "-o", "copy.mp4")
            same = (
                hashlib.sha256((work / "copy.mp4").read_bytes()).digest() == hashlib.sha256(movie.read_bytes()).digest()
            )
            console.print(f"  the copy is {'identical to' if same else 'DIFFERENT from'} Bob's file")
            if not same:
                return 1
            who = next(n for n in ("carol", "dave", "bob") if n != victim)
            owner = nodes[who]
            _say(f"{who.title()} keeps named files in a bucket: a folder put under a prefix, one index all read.")
            album = work / "album"
            (album / "2026").mkdir(parents=True)
            for i in range(3):
                _sample(album / "2026" / f"photo{i}.jpg", 64 * 1024)
            _run(who, owner.home, "bucket", "create", "album", "--class", "replica-3")
            _run(who, owner.home, "put", "album", "album/")
            _say("It is shared read-only with Erin: she imports it, lists it and gets a photo.")
            cap = json.loads(_run("", owner.home, "bucket", "share", "album", "--json", show=False))["cap"]
            _run("erin", erin.home, "bucket", "import", cap, "--as", "shared-album")
            _run("erin", erin.home, "ls", "shared-album/2026/")
            _run("erin", erin.home, "get", "shared-album/2026/photo1.jpg", "-o", "photo1.jpg")
        finally:
            _say("Stopping every daemon:")
            for name, d in nodes.items():
                code = d.stop()
                console.print(f"  {name} stopped ({'cleanly' if code == 0 else f'exit code {code}'})")
        console.rule("demo done; the throw-away nodes are deleted")
    return 0


def _members(node: DaemonProcess) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = json.loads(_run("", node.home, "cloud", "members", "--json", show=False))["members"]
    return members
