"""Dialing a peer by every candidate at once, with a short stagger: the first authenticated link wins.

One dialer per kind of path, in the `DIALERS` table (as Syncthing registers its dialers): a new
kind of path is a new dialer module, not a new branch here. Candidates start in preference order
(lan, mapped, public, relay) `STAGGER` seconds apart, or at once when the one before fails —
happy eyeballs (RFC 8305) for peers. Links that complete after the winner are closed.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace

from peercloud.connect.record import Candidate, Kind
from peercloud.connect.sockets import connect_from
from peercloud.identity import Identity, PeerId
from peercloud.net.link import DIAL_TIMEOUT, Address, NoticeHandler, PeerError, PeerLink, RequestHandler, dial
from peercloud.wire import messages as m

log = logging.getLogger(__name__)
STAGGER = 0.25  # seconds between starting one candidate and the next

# What `peercloud peers` calls the path a candidate of each kind gives.
PATH_OF = {Kind.LAN: "lan", Kind.PUBLIC: "direct", Kind.MAPPED: "mapped", Kind.RELAY: "relayed"}


@dataclass(frozen=True)
class DialContext:
    """What every dialer needs: who we are, who we expect, and the link's handlers."""

    identity: Identity
    hello: m.Hello
    peer: PeerId
    on_request: RequestHandler
    on_notice: NoticeHandler | None
    links: Callable[[], dict[PeerId, PeerLink]] = dict  # links we have (a relay's, to ask it for a circuit)
    local: Address | None = None  # our listening address: direct dials leave from its port


Dialer = Callable[[Candidate, DialContext], Coroutine[None, None, PeerLink]]


async def dial_direct(candidate: Candidate, ctx: DialContext) -> PeerLink:
    """A TCP connection to the candidate's address from our listening port, Noise XX inside."""
    hello = replace(ctx.hello, path=PATH_OF[candidate.kind])
    where = Address.parse(candidate.address)
    try:
        sock = await connect_from(ctx.local, where, DIAL_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise PeerError(f"cannot connect to {where}: {getattr(e, 'strerror', None) or e or 'timed out'}") from None
    return await dial(where, ctx.identity, hello, ctx.on_request, ctx.peer, ctx.on_notice, sock=sock)


DIALERS: dict[Kind, Dialer] = {Kind.LAN: dial_direct, Kind.PUBLIC: dial_direct, Kind.MAPPED: dial_direct}


async def dial_any(candidates: list[Candidate], ctx: DialContext, stagger: float = STAGGER) -> PeerLink:
    """The first candidate to give an authenticated link to `ctx.peer`; PeerError when none does."""
    queue = [c for c in candidates if c.kind in DIALERS]
    if not queue:
        raise PeerError(f"no address known for {ctx.peer.short()}")
    loop = asyncio.get_running_loop()
    tasks: dict[asyncio.Task[PeerLink], Candidate] = {}
    errors: list[str] = []
    winner: PeerLink | None = None
    try:
        while winner is None and (queue or tasks):
            if queue:
                c = queue.pop(0)
                tasks[loop.create_task(DIALERS[c.kind](c, ctx))] = c
            # Wait for an outcome; with candidates left, only for the stagger (a failure starts the next).
            done, _ = await asyncio.wait(tasks, timeout=stagger if queue else None, return_when="FIRST_COMPLETED")
            for task in done:
                c = tasks.pop(task)
                error = task.exception()
                if error is not None:
                    errors.append(f"{c.kind.value} {c.address}: {error}")
                    if not isinstance(error, PeerError | OSError):
                        log.error("dialer for %s failed unexpectedly", c.kind.value, exc_info=error)
                elif winner is None:
                    winner = task.result()
                else:
                    task.result().close("another path won")
        if winner is None:
            raise PeerError("; ".join(errors))
        return winner
    finally:
        for task in tasks:
            task.cancel()  # a dial cancelled mid-handshake closes its connection
