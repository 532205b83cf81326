"""Benchmark reaching peers in the NAT lab (tests/natlab.py; needs root, iproute2, nftables).

1. Time to the first authenticated link per kind of path, median of 5: `lan` (same home network),
   `direct` (a public host), `mapped` (a peer whose router forwards its port by UPnP: miniupnpd
   in home 3), `relayed` (a circuit through the relay, control link included), and `punched`
   (from the relayed link's start to the punched link, read from the daemon's log).
2. A 256 MiB get between the same two peers in the same run, relayed and punched: home 2's router
   is switched to a symmetric NAT for the relayed runs (the punch fails) and back to a cone NAT
   for the direct ones; median of 3 each, and the ratio (target: relayed >= 0.8 x direct).
3. The relay's CPU seconds per GB carried.

    sudo .venv/bin/python bench/connect.py [--size 256MiB] [--runs 3]
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.natlab import Lab, LabDaemon, natlab

from peercloud.units import format_size, parse_size

TICKS = os.sysconf("SC_CLK_TCK")

# Dial one candidate five times from a throwaway identity inside a namespace; print the seconds.
DIAL = r"""
import asyncio, json, sys, time
from peercloud.connect.dial import DialContext, dial_any
from peercloud.connect.record import Candidate, Kind
from peercloud.connect import relay_dial
from peercloud.identity import Identity, PeerId
from peercloud.wire import messages as m
kind, address, peer = sys.argv[1], sys.argv[2], PeerId.parse(sys.argv[3])
async def nothing(link, msg):
    return None
async def main():
    me, out = Identity.generate(), []
    hello = m.Hello(m.PROTOCOL_VERSION, (), "bench")
    for _ in range(6):
        start = time.perf_counter()
        link = await dial_any([Candidate(Kind(kind), address)], DialContext(me, hello, peer, nothing, None))
        out.append(time.perf_counter() - start)
        link.close()
        await asyncio.sleep(0.3)
    print(json.dumps(out[1:]))  # the first is the warm-up
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def dial_times(lab: Lab, ns: str, kind: str, address: str, peer: str) -> list[float]:
    out = lab.run(ns, sys.executable, "-c", DIAL, kind, address, peer).stdout
    return [float(x) for x in json.loads(out)]


def row(d: LabDaemon, other: LabDaemon) -> dict[str, object]:
    return next(r for r in d.json("peers") if r["peer_id"] == other.peer_id)


def wait_path(d: LabDaemon, other: LabDaemon, paths: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            path = str(row(d, other)["path"])
            if path in paths:
                return path
        except StopIteration:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no {paths} link from {d.ns} to {other.ns}")


def set_nat(lab: Lab, home: int, symmetric: bool) -> None:
    """Switch a home router between a cone (port-keeping) and a symmetric NAT."""
    masquerade = "masquerade fully-random" if symmetric else "masquerade"
    rules = f"""flush table ip nat
table ip nat {{
    chain post {{ type nat hook postrouting priority srcnat; oifname "wan0" {masquerade}; }}
}}
"""
    lab.run(f"r{home}", "nft", "-f", "/dev/stdin", input=rules)


def log_time(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def punch_seconds(log: Path, other: str, since: int) -> float:
    """Seconds from the latest relayed link to `other` to its punched link, from a daemon log."""
    lines = log.read_text().splitlines()[since:]
    relayed = [log_time(x) for x in lines if re.search(rf"link to {other} up: relayed", x)]
    punched = [log_time(x) for x in lines if re.search(rf"link to {other} up: punched", x)]
    if not relayed or not punched:
        raise SystemExit("no relayed-then-punched link in the log")
    return punched[-1] - relayed[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.size)
    root = Path(tempfile.mkdtemp(prefix="peercloud-connect-"))
    with natlab(root, {1: (2, "cone"), 2: (1, "cone"), 3: (1, "upnp")}) as lab:
        pub = lab.start("pub", "pub", roles=("directory", "relay"))
        m = lab.start("h3a", "m")  # behind the router that maps
        deadline = time.monotonic() + 30
        while not (mapped := m.json("status", "--node")["reachable"]["upnp"]["mapped"]):
            if time.monotonic() > deadline:
                raise SystemExit("no UPnP mapping in home 3")
            time.sleep(0.2)
        for home in ("a", "b"):
            lab.cli("h1a", root / home, "init")
            config = root / home / "config.toml"
            text = config.read_text().replace("directories = []", f'directories = ["{pub.address}"]')
            config.write_text(text.replace("relays = []", f'relays = ["{pub.address}"]'))
        a = lab.start("h1a", "a")
        a.cli("cloud", "create", "bench")
        b = lab.start("h2a", "b")
        b.cli("cloud", "join", a.cli("cloud", "invite").stdout.strip().splitlines()[-1])
        wait_path(b, a, {"relayed", "punched"})

        print("time to the first authenticated link, median of 5 (after one warm-up):")
        short = a.peer_id[:13]
        kinds = {
            # lan: from a's neighbour on its home network
            "lan": dial_times(lab, "h1b", "lan", f"192.168.1.10:{a.port}", a.peer_id),
            "direct": dial_times(lab, "h1b", "public", f"203.0.113.10:{pub.port}", pub.peer_id),
            "mapped": dial_times(lab, "h2a", "mapped", mapped, m.peer_id),
            "relayed": dial_times(lab, "h2a", "relay", f"{pub.peer_id}@203.0.113.10:{pub.port}", a.peer_id),
        }
        punches = []
        log = root / "b.log"
        # b restarts, each time on another port (a quick restart on the same port meets the old
        # punched connection's NAT state and punches only at the next retry): relayed, then punched.
        ports = iter(range(4700, 4800))
        for _ in range(5):
            b.stop()
            since = len(log.read_text().splitlines())
            b = lab.start("h2a", "b", port=next(ports))
            wait_path(b, a, {"punched"})
            punches.append(punch_seconds(log, short, since))
        kinds["punched (relayed link up -> punched link up)"] = punches
        for kind, times in kinds.items():
            print(f"  {kind:46s} {statistics.median(times) * 1000:8.1f} ms")

        src = root / "object.bin"
        with open(src, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        caps = [a.json("add", str(src), "--class", "replica-1")["read_cap"] for _ in range(2 * args.runs + 1)]
        timings: dict[str, list[float]] = {"relayed": [], "punched": []}
        cpu_per_gb = []
        for i in range(2 * args.runs + 1):
            relayed = i % 2 == 0
            set_nat(lab, 2, symmetric=relayed)
            b.stop()
            b = lab.start("h2a", "b", port=next(ports))
            got = wait_path(b, a, {"relayed"} if relayed else {"punched"})
            out = root / "copy.bin"
            cpu = cpu_seconds(pub.proc.pid)
            start = time.perf_counter()
            b.cli("get", caps[i], "-o", str(out))
            elapsed = time.perf_counter() - start
            if out.stat().st_size != size:
                raise SystemExit("wrong size received")
            out.unlink()
            if i == 0:
                print(f"\nwarm-up get ({got}) done in {elapsed:.2f} s")
                continue
            timings[got].append(elapsed)
            if relayed:
                cpu_per_gb.append((cpu_seconds(pub.proc.pid) - cpu) / (size / 1e9))
            print(f"run {i}: {got:8s} {size / 1e6 / elapsed:7.1f} MB/s", flush=True)
        r, d = statistics.median(timings["relayed"]), statistics.median(timings["punched"])
        mb = size / 1e6
        print(f"\n{format_size(size)} get between the same two peers, median of {args.runs}:")
        print(f"  relayed: {mb / r:7.1f} MB/s   punched (direct): {mb / d:7.1f} MB/s")
        print(f"  ratio relayed / direct = {d / r:.2f}   (target >= 0.8)")
        print(f"  relay CPU per GB carried: {statistics.median(cpu_per_gb):.2f} s")


if __name__ == "__main__":
    main()
