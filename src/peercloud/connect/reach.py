"""Peer exchange: our record kept current and handed to every peer we link with; members' records
passed on between members, so a member that moved is found through any other.

The asyncio side of the address book. A new link gets our record (and, between members, the
records of the other members we know); a newer record learned from anyone wakes the keeper of
that peer and is passed to the other members once (only newer records travel, so gossip ends).
Each peer may hand us `BURST` records at once and `RATE` a second after that: checking a
signature costs CPU, and a hostile peer must not make us spend it without bound.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from peercloud.connect.book import AddressBook, interface_addresses, kind_of
from peercloud.connect.record import Candidate, Kind, PeerRecord, RecordError
from peercloud.identity import PeerId
from peercloud.net.link import PeerLink
from peercloud.ratelimit import Buckets
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
REFRESH_EVERY = 60.0  # seconds between checks that our record is current
BURST = 64  # records a link may send at once
RATE = 16.0  # records a second a link may send after its burst


class Reach:
    """Keeps our record current and exchanges records over links."""

    def __init__(
        self,
        book: AddressBook,
        links: Callable[[], dict[PeerId, PeerLink]],
        listening: Callable[[], list[str]],
        is_member: Callable[[PeerId], bool],
        wake: Callable[[PeerId], None],
    ) -> None:
        self.book = book
        self.links = links
        self.listening = listening
        self.is_member = is_member
        self.wake = wake
        self.observed: dict[PeerId, str] = {}  # the address each directory (or relay) saw us come from
        self.on_own: Callable[[PeerRecord], None] = lambda _: None  # our record was re-signed
        self.relays: Callable[[], list[str]] = list  # relays holding a reservation for us, best first
        self.mapped: Callable[[], str | None] = lambda: None  # the port our router forwards to us
        self._allowance = Buckets(RATE, BURST)  # records each link may still hand us
        self._task: asyncio.Task[None] | None = None
        book.on_learned = self._learned

    def start(self) -> None:
        """Sign our record now and keep it fresh."""
        self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._keep_fresh())

    def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()

    def candidates(self) -> list[Candidate]:
        """Where we can be reached: our interfaces' addresses, our router's mapping, what others
        observed (the mapping often is that same address: then it is named as mapped), our relays."""
        found = [Candidate(kind_of(a), a) for a in interface_addresses(self.listening())]
        if mapped := self.mapped():
            found.append(Candidate(Kind.MAPPED, mapped))
        seen = {c.address for c in found}
        found += [Candidate(kind_of(a), a) for a in dict.fromkeys(self.observed.values()) if a not in seen]
        return found + [Candidate(Kind.RELAY, a) for a in self.relays()]

    def observe(self, by: PeerId, address: str) -> None:
        """A directory or relay saw us come from `address`: it may belong in our record."""
        if self.observed.get(by) != address:
            self.observed[by] = address
            self.refresh()

    def refresh(self) -> None:
        """Re-sign our record if our addresses changed or it nears expiry, and hand it out."""
        rec = self.book.sign_own(self.candidates())
        if rec is not None:
            log.info("our peer record is now seq %d: %s", rec.seq, ", ".join(c.address for c in rec.candidates))
            for link in list(self.links().values()):
                self._send(link, [rec])
            self.on_own(rec)

    def on_link(self, link: PeerLink) -> None:
        """A new link: it gets our record, and members get the other members' records."""
        records = [self.book.own] if self.book.own else []
        if link.peer_id is not None and self.is_member(link.peer_id):
            records += [r for p, r in self.book.records.items() if p != link.peer_id and self.is_member(p)]
        self._send(link, records)

    def on_records(self, link: PeerLink, msg: m.Records) -> None:
        """Verify what a peer handed us, within its allowance; the book keeps the newest."""
        if link.peer_id is None:
            return
        allowed = self._allowance.take(link.peer_id, len(msg.records))
        for raw in msg.records[:allowed]:
            try:
                self.book.learn(raw)
            except RecordError as e:
                log.debug("record from %s refused: %s", link.peer_id, e)
        if allowed < len(msg.records):
            log.info("ignored %d records from %s: over its rate", len(msg.records) - allowed, link.peer_id)

    def status(self) -> dict[str, Any]:
        """How this node can be reached, for `status --node`."""
        own = self.book.own
        return {
            "record_seq": own.seq if own else None,
            "candidates": [{"kind": c.kind.value, "address": c.address} for c in own.candidates] if own else [],
            "observed": sorted(set(self.observed.values())),
            "records_known": len(self.book.records),
            "records_refused": self.book.refused,
        }

    def _learned(self, rec: PeerRecord) -> None:
        self.wake(rec.peer_id)
        if not self.is_member(rec.peer_id):
            return
        for pid, link in list(self.links().items()):
            if pid != rec.peer_id and self.is_member(pid):
                self._send(link, [rec])

    def _send(self, link: PeerLink, records: list[PeerRecord]) -> None:
        if link.conn.state is not State.OPEN:
            return
        for start in range(0, len(records), m.MAX_RECORDS):
            link.notify(m.Records(tuple(r.raw for r in records[start : start + m.MAX_RECORDS])))

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            self.refresh()
