"""The address book: where each peer can be reached, from its newest signed record and hints.

Records come from the peers themselves, members passing them on, and directories; every one is
verified (`record.verify`) and only the newest per peer is kept, for peers this node has a
reason to reach (members, configured peers, peers it looked up): a stranger cannot fill the
book. Hints are addresses from elsewhere (the cloud document, `peers add`, an invite): used when
no record says better. The book also signs this node's own record when its addresses change.
"""

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable

import ifaddr

from peercloud.connect.record import RECORD_TTL, Candidate, Kind, PeerRecord, RecordError, verify
from peercloud.identity import Identity, PeerId
from peercloud.store.records import RecordTables

log = logging.getLogger(__name__)
REFRESH_BEFORE = RECORD_TTL // 3  # re-sign our record when it has less than this left
MAX_HINTS = 8
PREFERENCE = (Kind.LAN, Kind.MAPPED, Kind.PUBLIC, Kind.RELAY)  # dial order, as DESIGN.md §6 says


# Addresses only a local network routes: RFC 1918, loopback, link-local, IPv6 unique local. (Not
# Python's is_private, which also counts documentation and other special ranges as private.)
LAN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def kind_of(address: str) -> Kind:
    """LAN for addresses only a local network routes; PUBLIC otherwise (names included)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Kind.PUBLIC
    return Kind.LAN if any(ip in net for net in LAN_NETWORKS if net.version == ip.version) else Kind.PUBLIC


def interface_addresses(listening: Iterable[str]) -> list[str]:
    """The addresses a listener is reachable at: an unspecified host stands for every interface.

    Loopback addresses are named only when the listener is bound to one (a daemon on 127.0.0.1
    for tests): elsewhere they would send a remote peer to itself.
    """
    out: list[str] = []
    for text in listening:
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        if host not in ("0.0.0.0", "::", ""):
            out.append(text)
            continue
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and host == "0.0.0.0" and not ip.ip.startswith("127."):
                    out.append(f"{ip.ip}:{port}")
                elif isinstance(ip.ip, tuple) and host == "::" and ip.ip[0] != "::1" and not ip.ip[2]:
                    out.append(f"[{ip.ip[0]}]:{port}")
    return list(dict.fromkeys(out))


class AddressBook:
    """Newest verified record per wanted peer, hints, and our own record."""

    def __init__(
        self,
        identity: Identity,
        index: RecordTables,
        wanted: Callable[[PeerId], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.index = index
        self.wanted = wanted  # members, configured peers, lookups in flight: the only records kept
        self.clock = clock
        self.records: dict[PeerId, PeerRecord] = {}
        self.hints: dict[PeerId, list[str]] = {}
        self.own: PeerRecord | None = None
        self._own_seq = -1
        self.refused = 0  # records refused since start (forged, replayed, expired, oversized, malformed)
        self.on_learned: Callable[[PeerRecord], None] = lambda _: None  # a newer record arrived

    def load(self) -> None:
        """Read the records kept on disk; ones expired meanwhile are dropped."""
        now = self.clock()
        self.index.drop_expired_records(now)
        for raw in self.index.records():
            try:
                rec = verify(raw, now)
            except RecordError:
                continue
            if rec.peer_id == self.identity.peer_id:
                self._own_seq = rec.seq
            else:
                self.records[rec.peer_id] = rec

    def learn(self, raw: bytes) -> PeerRecord | None:
        """Verify a record from anyone and keep it when it is the newest of a wanted peer.

        Returns the record when it changed what the book knows; None when it was not wanted or
        not newer. Raises RecordError for a forged, expired, oversized or malformed record.
        """
        now = self.clock()
        try:
            rec = verify(raw, now)
        except RecordError:
            self.refused += 1
            raise
        if rec.peer_id == self.identity.peer_id or not self.wanted(rec.peer_id):
            return None
        known = self.records.get(rec.peer_id)
        if known is not None and rec.seq <= known.seq:
            if rec.seq < known.seq or rec.raw != known.raw:
                self.refused += 1
                raise RecordError(f"peer record for {rec.peer_id.short()} is not newer than ours", "replayed")
            return None
        self.records[rec.peer_id] = rec
        self.index.put_record(rec.peer_id.public_key, rec.seq, rec.expires_at, rec.raw)
        self.on_learned(rec)
        return rec

    def record(self, peer: PeerId) -> PeerRecord | None:
        """The newest unexpired record of a peer."""
        rec = self.records.get(peer)
        if rec is not None and rec.expires_at <= self.clock():
            del self.records[peer]
            return None
        return rec

    def hint(self, peer: PeerId, addresses: Iterable[str]) -> None:
        """Addresses from elsewhere (cloud document, invite, `peers add`): tried after the record's,
        the latest given first."""
        merged = [*(a for a in addresses if a), *self.hints.get(peer, ())]
        self.hints[peer] = list(dict.fromkeys(merged))[:MAX_HINTS]

    def candidates(self, peer: PeerId) -> list[Candidate]:
        """Every way to reach a peer, best kind first (lan, mapped, public, relay); within a kind,
        its record's candidates before hints (the latest hint first)."""
        rec = self.record(peer)
        found = list(rec.candidates) if rec else []
        seen = {c.address for c in found}
        found += [Candidate(kind_of(a), a) for a in self.hints.get(peer, ()) if a not in seen]
        return sorted(found, key=lambda c: PREFERENCE.index(c.kind))

    def sign_own(self, candidates: list[Candidate]) -> PeerRecord | None:
        """Our record for these candidates: re-signed when they changed or it nears expiry.

        Returns the new record, or None when the current one still stands. Its sequence number
        is the time in milliseconds, above every one signed before (kept across restarts).
        """
        now = self.clock()
        own = self.own
        if own is not None and list(own.candidates) == candidates and own.expires_at - now > REFRESH_BEFORE:
            return None
        seq = max(int(now * 1000), self._own_seq + 1)
        rec = PeerRecord.sign(self.identity, seq, candidates, now)
        self._own_seq = seq
        self.own = rec
        self.index.put_record(self.identity.peer_id.public_key, rec.seq, rec.expires_at, rec.raw)
        return rec
