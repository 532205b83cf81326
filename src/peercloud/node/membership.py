"""This node's cloud: the signed document, invites, joining and leaving, and gossiping versions.

The document is kept in the index; every change an admin makes is a new signed version sent to
every connected member, and members forward what they accept, so a version reaches members who
were offline as soon as they meet anyone who has it. Connections to all members are kept.
"""

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable

from peercloud.cloud.classes import DEFAULT_CLASSES, StorageClass
from peercloud.cloud.document import ADMIN, MEMBER, CloudDoc, Invite, Member, SignedDoc, parse_tags
from peercloud.errors import IntegrityError, NotFoundError, RefusedError, UsageError
from peercloud.identity import Identity, PeerId
from peercloud.net.link import Address, PeerError, PeerLink
from peercloud.node.docchain import DocChain
from peercloud.store.index import Index
from peercloud.swarm.peers import PeerManager
from peercloud.wire import messages as m
from peercloud.wire.connection import State

log = logging.getLogger(__name__)
JOIN_TIMEOUT = 15.0


class Membership:
    """Holds the cloud document and acts on it; one per daemon."""

    def __init__(
        self, identity: Identity, index: Index, peers: PeerManager, listening: Callable[[], list[str]]
    ) -> None:
        self.identity = identity
        self.index = index
        self.peers = peers
        self.listening = listening
        raw = index.cloud_doc()
        self.signed: SignedDoc | None = SignedDoc.decode(raw) if raw else None
        if raw is not None and self.signed is not None and index.cloud_version(self.signed.doc.seq) is None:
            index.set_cloud_chain([(self.signed.doc.seq, raw)])  # a home from before versions were kept
        self.chain = DocChain(identity.peer_id, index, lambda: self.signed, self.adopt, self.publish)
        self.on_left: Callable[[], None] = lambda: None  # after the cloud's tables were forgotten
        self.on_doc: Callable[[CloudDoc | None, CloudDoc], None] = lambda _, __: None  # a new version in force
        self.directories: Callable[[], list[str]] = list  # ours, handed to joiners in invites
        self.relays: Callable[[], list[str]] = list  # likewise
        self.on_invite: Callable[[Invite], None] = lambda _: None  # use the invite's directories and relays
        self.on_joined: Callable[[Invite], None] = lambda _: None  # and keep them

    @property
    def doc(self) -> CloudDoc | None:
        """The current document, or None outside any cloud."""
        return self.signed.doc if self.signed else None

    def require(self) -> CloudDoc:
        """The document, or an error telling the user how to get into a cloud."""
        if self.signed is None:
            raise NotFoundError(
                "this node is in no cloud: `peercloud cloud create NAME` or `peercloud cloud join TOKEN`"
            )
        return self.signed.doc

    def require_admin(self) -> CloudDoc:
        """The document, when this node may change it."""
        doc = self.require()
        if not doc.is_admin(self.identity.peer_id):
            raise RefusedError("only an admin of the cloud can do this; this node is a member")
        return doc

    def is_member(self, peer_id: PeerId | None) -> bool:
        """True for members of this node's cloud (never for outsiders or when in no cloud)."""
        return peer_id is not None and self.doc is not None and self.doc.member(peer_id) is not None

    @property
    def classes(self) -> dict[str, StorageClass]:
        """The classes in force: the cloud's, or the defaults outside a cloud."""
        return self.doc.class_map if self.doc else dict(DEFAULT_CLASSES)

    def start(self) -> None:
        """Connect to every member."""
        if self.doc is not None:
            self._connect(self.doc.members)

    # -- admin actions

    def create(self, name: str, offer: int, tags: Iterable[str]) -> CloudDoc:
        """Found a cloud with this node as its admin."""
        if self.signed is not None:
            raise UsageError(f"this node is already in cloud {self.signed.doc.name!r}; leave it first")
        me = Member(self.identity.peer_id, ADMIN, offer, parse_tags(tags), tuple(self._addresses()))
        self.adopt([SignedDoc.create(CloudDoc.genesis(name, me), self.identity)])
        return self.require()

    def invite(self, expires_in: float | None) -> Invite:
        """A one-time token another peer can join with."""
        doc = self.require_admin()
        secret = os.urandom(32)
        expires = time.time() + expires_in if expires_in is not None else None
        invite = Invite(
            doc.cloud_id,
            self.identity.peer_id,
            tuple(self._addresses()),
            secret,
            expires,
            tuple(self.directories()),
            tuple(self.relays()),
        )
        self.index.add_invite(invite.secret_hash, expires)
        return invite

    def remove(self, peer_id: PeerId) -> CloudDoc:
        """Take a member out of the cloud (admin only)."""
        doc = self.require_admin()
        if doc.member(peer_id) is None:
            raise NotFoundError(f"{peer_id} is not a member of this cloud")
        self.publish(doc.without_member(peer_id))
        return self.require()

    def set_role(self, peer_id: PeerId, role: str) -> CloudDoc:
        """Promote a member to admin, or demote an admin (admin only; never the last admin)."""
        self.publish(self.require_admin().with_role(peer_id, role))
        return self.require()

    def set_classes(self, classes: Iterable[StorageClass]) -> CloudDoc:
        """Replace the class list (admin only)."""
        self.publish(self.require_admin().evolve(classes=classes))
        return self.require()

    def publish(self, doc: CloudDoc) -> None:
        """Sign a new version on top of ours, keep it, and send it to every connected member;
        nothing when it would change nothing (the same members and classes as ours)."""
        current = self.doc
        if current is not None and doc.members == current.members and doc.classes == current.classes:
            return
        self.adopt([SignedDoc.create(doc, self.identity)])

    # -- joining and leaving

    async def join(self, token: str, offer: int, tags: Iterable[str]) -> CloudDoc:
        """Present an invite to its admin; on success this node is a member."""
        if self.signed is not None:
            raise UsageError(f"this node is already in cloud {self.signed.doc.name!r}; leave it first")
        invite = Invite.parse(token)
        if invite.expires is not None and time.time() > invite.expires:
            raise RefusedError("this invite has expired: ask the admin for a new one")
        self.on_invite(invite)  # its directories and relays help reach an admin behind a NAT
        try:
            link = await self.peers.reach(invite.admin, invite.addresses)
        except PeerError as e:
            raise RefusedError(f"cannot reach the admin {invite.admin.short()}: {e}") from None
        tag_texts = tuple(f"{k}={v}" for k, v in parse_tags(tags))
        request = m.Join(link.next_id(), invite.cloud_id, invite.secret, offer, tag_texts, tuple(self.listening()))
        try:
            answer = await link.call(request, JOIN_TIMEOUT)
        except PeerError as e:
            raise RefusedError(f"the admin refused: {e}") from None
        finally:
            if self.peers.links.get(invite.admin) is not link:
                link.close("joined")
        assert isinstance(answer.message, m.Ok)
        try:
            signed = SignedDoc.decode(answer.message.doc)
        except IntegrityError as e:
            raise RefusedError(f"the admin sent an invalid cloud document: {e}") from None
        doc = signed.doc
        if (
            doc.cloud_id != invite.cloud_id
            or signed.signer != invite.admin
            or doc.member(self.identity.peer_id) is None
        ):
            raise RefusedError("the admin's answer does not admit this node to the invited cloud")
        self.adopt([signed])  # the versions before it come from members later (DocChain)
        self.on_joined(invite)
        return doc

    async def leave(self) -> None:
        """Leave the cloud: an admin signs itself out, a member asks a connected admin."""
        doc = self.require()
        me = self.identity.peer_id
        if doc.is_admin(me):
            if len(doc.members) > 1 and sum(1 for x in doc.members if x.role == ADMIN) == 1:
                raise RefusedError("you are the only admin: make another member admin first, or remove the others")
            if len(doc.members) > 1:
                self.publish(doc.without_member(me))  # valid: signed by an admin of its parent
                return  # adopting a version without us left the cloud
        else:
            admins = [x.peer_id for x in doc.members if x.role == ADMIN and x.peer_id in self.peers.links]
            if not admins:
                raise RefusedError("no admin is online to sign you out; try again when one is")
            link = self.peers.links[admins[0]]
            try:
                await link.call(m.Leave(link.next_id(), doc.cloud_id), JOIN_TIMEOUT)
            except PeerError as e:
                raise RefusedError(f"the admin refused: {e}") from None
        self._forget()

    # -- peers' requests and gossip

    async def on_request(self, link: PeerLink, msg: m.Message) -> None:
        """Join and Leave requests from peers."""
        peer = link.peer_id
        assert peer is not None
        try:
            if isinstance(msg, m.Join):
                self._admit(link, peer, msg)
                assert self.signed is not None
                await link.answer(msg.id, m.Ok(msg.id, self.signed.encode()))
            elif isinstance(msg, m.Leave):
                doc = self.require_admin()
                if msg.cloud != doc.cloud_id or doc.member(peer) is None:
                    raise RefusedError("not a member of this cloud")
                await link.answer(msg.id, m.Ok(msg.id))  # before publishing: that closes the leaver's link
                self.publish(doc.without_member(peer))
        except (RefusedError, NotFoundError, UsageError) as e:
            log.warning("refused %s from %s: %s", msg.TYPE, peer.short(), e)
            await link.answer(getattr(msg, "id", 0), m.Error(getattr(msg, "id", 0), "refused", str(e)))

    def _admit(self, link: PeerLink, peer: PeerId, msg: m.Join) -> None:
        doc = self.require_admin()
        if msg.cloud != doc.cloud_id:
            raise RefusedError("this invite is for another cloud")
        existing = doc.member(peer)
        secret_hash = Invite(doc.cloud_id, peer, (), msg.secret, None).secret_hash
        problem = self.index.use_invite(secret_hash, peer.public_key, retry=existing is not None)
        if problem:
            raise RefusedError(problem)
        # Over a relayed link the remote address is the relay's: it says nothing about the joiner.
        observed = Address.parse(link.remote).host if link.remote != "?" and link.path != "relayed" else ""
        addresses = tuple(_advertised(a, observed) for a in msg.listen[:8])
        # A member presenting its invite again may change its offer, never above what was admitted.
        offer = min(msg.offer, existing.offer) if existing else msg.offer
        role, since = (existing.role, existing.admin_since) if existing else (MEMBER, 0)
        member = Member(peer, role, offer, parse_tags(msg.tags), addresses, since)
        if member == existing:
            return  # a retry that changes nothing: no new version (the chain grows only by changes)
        self.publish(doc.with_member(member))
        log.info("admitted %s to cloud %r", peer.short(), doc.name)

    def on_link(self, link: PeerLink) -> None:
        """A member connected: send it our version of the document (nobody else gets it)."""
        if self.signed is not None and self.is_member(link.peer_id):
            link.notify(m.CloudDoc(self.signed.encode()))
            self.chain.on_link(link)

    def on_gossip(self, link: PeerLink, msg: m.CloudDoc) -> None:
        """A member sent its version: the chain keeps it, reconciles, or helps the member catch up.
        Outsiders' versions are not read, and they never get ours (the member list is the cloud's)."""
        if self.signed is None:
            return
        try:
            theirs = SignedDoc.decode(msg.doc)
            if self.is_member(link.peer_id):
                self.chain.on_gossip(link, theirs)
            elif link.peer_id is not None and theirs.doc.member(link.peer_id) is not None:
                self._tell_removed(link, link.peer_id)  # a former member, back: only its removal
        except (IntegrityError, RefusedError) as e:
            log.warning("refused cloud document from %s: %s", link.peer_id.short() if link.peer_id else "?", e)

    async def on_want(self, link: PeerLink, msg: m.CloudDocWant) -> None:
        """A member asks for an earlier version of the document; a former member may fetch the
        versions up to its removal (to check the chain that removed it), nothing after."""
        if not self.is_member(link.peer_id):
            removal = self._removal_of(link.peer_id) if link.peer_id is not None else None
            if removal is None or msg.seq > removal.doc.seq:
                await link.answer(msg.id, m.Error(msg.id, "refused", "not a member of this node's cloud"))
                return
        await self.chain.on_request(link, msg)

    def adopt(self, versions: list[SignedDoc]) -> None:
        """Make these versions (consecutive) the end of our chain, durably, and act on the last:
        send it to members, connect to new ones, drop those gone; leave when it removed us."""
        self.index.set_cloud_chain([(v.doc.seq, v.encode()) for v in versions])
        new = versions[-1]
        if new.doc.member(self.identity.peer_id) is None:
            old, self.signed = self.signed, new
            for link in self._member_links(new.doc):
                link.notify(m.CloudDoc(new.encode()))  # our own departure must reach the others
            if new.signer != self.identity.peer_id:
                log.warning("removed from cloud %r by %s", new.doc.name, new.signer.short())
            self.signed = old
            self._forget()
            return
        self._store(new)

    # -- internals

    def _removal_of(self, peer: PeerId) -> SignedDoc | None:
        """The version of our chain that removed a former member (None if it never was one)."""
        head = self.signed
        if head is None or head.doc.member(peer) is not None:
            return None
        while head.doc.seq > 1:
            parent = self.chain.version(head.doc.seq - 1)
            if parent is None:
                return None
            if parent.doc.member(peer) is not None:
                return head
            head = parent
        return None

    def _tell_removed(self, link: PeerLink, peer: PeerId) -> None:
        """Send a former member the version that removed it, and nothing newer."""
        removal = self._removal_of(peer)
        if removal is not None:
            link.notify(m.CloudDoc(removal.encode()))

    def _member_links(self, doc: CloudDoc) -> list[PeerLink]:
        """Open links to the members of `doc` (a link may be closing while a version arrives)."""
        links = list(self.peers.links.items())
        return [lk for p, lk in links if doc.member(p) is not None and lk.conn.state is State.OPEN]

    def _store(self, signed: SignedDoc) -> None:
        old = self.doc
        self.signed = signed
        for link in self._member_links(signed.doc):
            link.notify(m.CloudDoc(signed.encode()))
        if old is not None:
            for gone in {x.peer_id for x in old.members} - {x.peer_id for x in signed.doc.members}:
                self.peers.drop(gone)
                stale = self.peers.links.get(gone)
                if stale is not None and stale.conn.state is State.OPEN:
                    stale.notify(m.CloudDoc(signed.encode()))  # the version that removed it: it must know
                    if not any(raw == gone.public_key for raw, _ in self.index.peers()):
                        stale.close("no longer a member of the cloud")
        self._connect(signed.doc.members)
        self.on_doc(old, signed.doc)

    def _forget(self) -> None:
        doc = self.doc
        self.chain.stop()
        self.index.leave_cloud()  # what we held for it is no longer kept; pins by hand stay
        self.signed = None
        self.on_left()
        if doc is not None:
            for x in doc.members:
                self.peers.drop(x.peer_id)

    def _connect(self, members: Iterable[Member]) -> None:
        for x in members:
            if x.peer_id != self.identity.peer_id:
                self.peers.ensure(x.peer_id, x.addresses)

    def _addresses(self) -> list[str]:
        return [_advertised(a, _outbound_ip()) for a in self.listening()]


def _advertised(text: str, observed: str) -> str:
    """A listen address others can dial: an unspecified host becomes the observed one."""
    address = Address.parse(text)
    if address.host in ("0.0.0.0", "::", "") and observed:
        address = Address(observed, address.port)
    return str(address)


def _outbound_ip() -> str:
    """This machine's address on its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
