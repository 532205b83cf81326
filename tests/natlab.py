"""A NAT lab in network namespaces: a public host, home networks behind nftables NAT routers.

    wan (bridge, 203.0.113.0/24) ── pub 203.0.113.10            directory, relays
        ├── r1 203.0.113.1 ── NAT ── lan 192.168.1.0/24 ── h1a .10, h1b .11, …
        └── r2 203.0.113.2 ── NAT ── lan 192.168.2.0/24 ── h2a .10, …

What DESIGN.md §11 learned building one: plain `masquerade` keeps source ports and maps
endpoint-independently (punching works), `masquerade fully-random` (iptables: random-fully) is symmetric (it fails and a
relay must carry); a router drops new connections arriving from the wan side, as home routers
do; `icmp_ratelimit=0` in the wan; fresh names per run; only addresses inside the namespaces we
made; everything deleted afterwards. Needs root, iproute2 and nftables (`make` installs them).

A home of kind "upnp" is a cone NAT whose router also runs miniupnpd (port mapping by UPnP IGD).
miniupnpd refuses to map when its external address is in a reserved range, as 203.0.113.0/24 is,
unless a STUN check says the address is reachable from outside: so the public host also runs a
STUN server (stund, which needs a second address) and that router lets the check's answers in.
"""

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
ENV.pop("PEERCLOUD_HOME", None)


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (as root), failing loudly with its output."""
    result = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class LabDaemon:
    """A peercloud daemon running inside a namespace."""

    lab: "Lab"
    ns: str
    home: Path
    proc: subprocess.Popen[bytes]
    state: dict[str, Any]
    ip: str

    @property
    def peer_id(self) -> str:
        return str(self.state["peer_id"])

    @property
    def port(self) -> int:
        return int(self.state["listen"][0].rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        """PEERID@IP:PORT as the lab's other hosts reach it."""
        return f"{self.peer_id}@{self.ip}:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.cli(self.ns, self.home, *args, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Lab:
    """Namespaces by role; `build` makes them, `close` deletes every one."""

    root: Path
    prefix: str = field(default_factory=lambda: f"pc{secrets.token_hex(3)}")
    namespaces: list[str] = field(default_factory=list)
    daemons: list[LabDaemon] = field(default_factory=list)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # stund, miniupnpd

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def run(
        self, name: str, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command inside one of the lab's namespaces."""
        return sh("ip", "netns", "exec", self.ns(name), *args, check=check, input=input)

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", self.ns(name))
        self.namespaces.append(self.ns(name))
        self.run(name, "ip", "link", "set", "lo", "up")

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        sh("ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        self.run(a, "ip", "link", "set", a_if, "up")
        self.run(b, "ip", "link", "set", b_if, "up")

    def build(self, homes: dict[int, tuple[int, str]]) -> None:
        """The wan, the public host, and per home: a router with `nat` ("cone", "symmetric" or
        "upnp") and that many hosts (`homes[i] = (hosts, nat)`)."""
        self._add_ns("wan")
        self.run("wan", "ip", "link", "add", "br0", "type", "bridge")
        self.run("wan", "ip", "link", "set", "br0", "up")
        self.run("wan", "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        self._add_ns("pub")
        self._veth("pub", "eth0", "wan", "pub")
        self.run("wan", "ip", "link", "set", "pub", "master", "br0")
        self.run("pub", "ip", "addr", "add", "203.0.113.10/24", "dev", "eth0")
        if any(nat == "upnp" for _, nat in homes.values()):
            self.run("pub", "ip", "addr", "add", "203.0.113.11/24", "dev", "eth0")
            self._helper("pub", "stund", "stund", "-h", "203.0.113.10", "-a", "203.0.113.11")
        for i, (hosts, nat) in homes.items():
            router = f"r{i}"
            self._add_ns(router)
            self._veth(router, "wan0", "wan", f"r{i}")
            self.run("wan", "ip", "link", "set", f"r{i}", "master", "br0")
            self.run(router, "ip", "addr", "add", f"203.0.113.{i}/24", "dev", "wan0")
            self.run(router, "ip", "link", "add", "lan0", "type", "bridge")
            self.run(router, "ip", "link", "set", "lan0", "up")
            self.run(router, "ip", "addr", "add", f"192.168.{i}.1/24", "dev", "lan0")
            self.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            masquerade = "masquerade fully-random" if nat == "symmetric" else "masquerade"
            # What the router itself drops: new connections from the wan; a router running the
            # STUN check lets UDP in (its answers come from another address and port).
            refused = "meta l4proto tcp" if nat == "upnp" else ""
            rules = f"""
table ip nat {{
    chain post {{ type nat hook postrouting priority srcnat; oifname "wan0" {masquerade}; }}
}}
table inet filter {{
    chain guard_forward {{
        type filter hook forward priority filter;
        iifname "wan0" ct status dnat accept;
        iifname "wan0" ct state new drop;
    }}
    chain guard_input {{ type filter hook input priority filter; iifname "wan0" ct state new {refused} drop; }}
}}
"""
            self.run(router, "nft", "-f", "-", input=rules)
            if nat == "upnp":
                self._miniupnpd(i)
            for j in range(hosts):
                host = f"h{i}{chr(ord('a') + j)}"
                self._add_ns(host)
                self._veth(host, "eth0", router, f"l{j}")
                self.run(router, "ip", "link", "set", f"l{j}", "master", "lan0")
                self.run(host, "ip", "addr", "add", f"192.168.{i}.{10 + j}/24", "dev", "eth0")
                self.run(host, "ip", "route", "add", "default", "via", f"192.168.{i}.1")

    def _helper(self, ns: str, log_name: str, *command: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{self.prefix}-{log_name}.log", "wb")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *command], stdout=log, stderr=log)
        self.helpers.append(proc)
        return proc

    def _miniupnpd(self, i: int) -> None:
        """miniupnpd on router i, mapping for its LAN into chains of its own; ready when the
        STUN check has enabled port forwarding."""
        self.run(
            f"r{i}",
            "nft",
            "-f",
            "-",
            input="""
table inet miniupnpd {
    chain forward { type filter hook forward priority -10; jump forward_upnp; }
    chain forward_upnp { }
    chain prerouting { type nat hook prerouting priority dstnat - 10; jump prerouting_upnp; }
    chain prerouting_upnp { }
    chain postrouting { type nat hook postrouting priority srcnat - 10; jump postrouting_upnp; }
    chain postrouting_upnp { }
}
""",
        )
        conf = self.root / f"{self.prefix}-miniupnpd-r{i}.conf"
        conf.write_text(
            f"""ext_ifname=wan0
listening_ip=lan0
http_port=0
enable_natpmp=no
secure_mode=yes
ext_perform_stun=yes
ext_stun_host=203.0.113.10
ext_stun_port=3478
uuid=6d1f3c2a-0000-4000-8000-{secrets.token_hex(6)}
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=forward_upnp
upnp_nat_chain=prerouting_upnp
upnp_nat_postrouting_chain=postrouting_upnp
lease_file={self.root / f"{self.prefix}-miniupnpd-r{i}.leases"}
allow 1024-65535 192.168.{i}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""
        )
        proc = self._helper(f"r{i}", f"miniupnpd-r{i}", "miniupnpd", "-d", "-f", str(conf))
        log = self.root / f"{self.prefix}-miniupnpd-r{i}.log"
        deadline = time.monotonic() + 30
        while "Port forwarding is now enabled" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"miniupnpd on r{i} did not enable port forwarding; see {log}")
            time.sleep(0.1)

    def ip_of(self, name: str) -> str:
        """The lab address of a host namespace (pub, h1a, h2b, …)."""
        if name == "pub":
            return "203.0.113.10"
        return f"192.168.{name[1]}.{10 + ord(name[2]) - ord('a')}"

    def command(self, name: str, home: Path, *args: str) -> list[str]:
        """The real CLI's command line inside a namespace (the daemon's API is on that namespace's loopback)."""
        return ["ip", "netns", "exec", self.ns(name), sys.executable, "-m", "peercloud", "--home", str(home), *args]

    def popen(self, name: str, home: Path, *args: str) -> subprocess.Popen[str]:
        """The CLI inside a namespace, not waited for."""
        return subprocess.Popen(
            self.command(name, home, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )

    def cli(self, name: str, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real CLI inside a namespace, waited for."""
        cmd = self.command(name, home, *args)
        result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"peercloud {' '.join(args)} in {name} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, name: str, home_name: str, roles: tuple[str, ...] = (), port: int = 4650) -> LabDaemon:
        """Start `peercloud up` in namespace `name`, listening on all its addresses."""
        home = self.root / home_name
        if not (home / "node.key").exists():
            self.cli(name, home, "init")
        (home / "daemon.json").unlink(missing_ok=True)
        cmd = ["ip", "netns", "exec", self.ns(name), sys.executable, "-m", "peercloud", "--home", str(home), "up"]
        cmd += ["--listen", f"0.0.0.0:{port}", "--api", "127.0.0.1:0", "--verbose", *[f"--role={r}" for r in roles]]
        log = open(home.parent / f"{home_name}.log", "ab")  # noqa: SIM115 - the daemon owns it
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=ENV, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon in {name} exited with {proc.returncode}; see {log.name}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = json.loads((home / "daemon.json").read_text())
                if state.get("pid") == proc.pid:
                    d = LabDaemon(self, name, home, proc, state, self.ip_of(name))
                    self.daemons.append(d)
                    return d
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"daemon in {name} did not start")

    def close(self) -> None:
        """Stop every daemon, delete every namespace (with it every interface and rule)."""
        for d in self.daemons:
            d.stop(timeout=10)
        for proc in self.helpers:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in reversed(self.namespaces):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def natlab(root: Path, homes: dict[int, tuple[int, str]]) -> Iterator[Lab]:
    """A built lab for the block; torn down afterwards whatever happened."""
    lab = Lab(root)
    try:
        lab.build(homes)
        yield lab
    finally:
        lab.close()
