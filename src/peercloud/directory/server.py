"""The directory server: verified records by peer, newest wins, each for at most a TTL; lookups by
peer ID; the address each publisher is seen from. Bounded in records and in work per IP.

Any peer may publish its own record (signed by its key, so nobody publishes for another) and look
any peer up: a directory is public by nature, like a DNS server. It never relays data.
"""

import logging
import time
from collections.abc import Callable

from peercloud.connect.record import PeerRecord, RecordError, verify
from peercloud.identity import PeerId
from peercloud.net.link import PeerLink
from peercloud.ratelimit import Buckets
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
DIRECTORY_TTL = 3600  # a record is forgotten this long after it was published, even if it says later
MAX_RECORDS = 50_000  # records kept (at most 1000 bytes each: 50 MB)
PUBLISH_RATE, PUBLISH_BURST = 1.0, 10  # publishes per second per IP
LOOKUP_RATE, LOOKUP_BURST = 20.0, 100  # lookups per second per IP


def host_of(remote: str) -> str:
    """The IP of a HOST:PORT a link came from (rate limits count per IP, not per port)."""
    return remote.rpartition(":")[0].strip("[]") or remote


class DirectoryServer:
    """Answers Publish and Lookup; holds records in memory (publishers publish again after a restart)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.records: dict[PeerId, tuple[PeerRecord, float]] = {}  # peer → (record, forget at)
        self.publishes = Buckets(PUBLISH_RATE, PUBLISH_BURST)
        self.lookups = Buckets(LOOKUP_RATE, LOOKUP_BURST)

    async def on_request(self, link: PeerLink, msg: m.Publish | m.Lookup) -> None:
        """Serve one request from any peer."""
        ip = host_of(link.remote)
        if isinstance(msg, m.Publish):
            if not self.publishes.take(ip):
                await link.answer(msg.id, m.Error(msg.id, "busy", "too many publishes from this address: slow down"))
                return
            await link.answer(msg.id, self.publish(link.peer_id, msg, link.remote))
        else:
            if not self.lookups.take(ip):
                await link.answer(msg.id, m.Error(msg.id, "busy", "too many lookups from this address: slow down"))
                return
            await link.answer(msg.id, self.lookup(msg))

    def publish(self, sender: PeerId | None, msg: m.Publish, remote: str) -> m.Message:
        """Keep a publisher's own record when it is newer than the one kept."""
        now = self.clock()
        self._expire(now)
        known = self.records.get(sender) if sender is not None else None
        try:
            rec = verify(msg.record, now, known[0].seq - 1 if known else -1)
        except RecordError as e:
            return m.Error(msg.id, "bad_request", str(e))
        if rec.peer_id != sender:
            return m.Error(msg.id, "refused", "publish your own record: it is not signed by this link's peer")
        if known is not None and rec.seq == known[0].seq and rec.raw != known[0].raw:
            return m.Error(msg.id, "bad_request", "a different record with the same seq is kept")
        if rec.peer_id not in self.records and len(self.records) >= MAX_RECORDS:
            return m.Error(msg.id, "busy", "the directory is full")
        forget_at = min(float(rec.expires_at), now + DIRECTORY_TTL)
        self.records[rec.peer_id] = (rec, forget_at)
        return m.Published(msg.id, remote, int(forget_at))

    def lookup(self, msg: m.Lookup) -> m.Message:
        """The newest record kept for a peer."""
        kept = self.records.get(PeerId(msg.peer))
        if kept is None or kept[1] <= self.clock():
            return m.Error(msg.id, "not_found", "no record of that peer here")
        return m.Found(msg.id, kept[0].raw)

    def _expire(self, now: float) -> None:
        """Forget records past their time (checked on publish: lookups check the one they read)."""
        if len(self.records) < MAX_RECORDS // 2:
            return  # cheap enough to keep expired ones until the table fills
        for peer in [p for p, (_, at) in self.records.items() if at <= now]:
            del self.records[peer]
