"""The cloud document: who is in the cloud (role, offered quota, tags, addresses) and its classes.

An admin signs each version; each names the hash of the version it was built on (`prev`), so
the versions form a chain (`cloud/history.py` says which chains are valid and which branch wins
when two admins edit at once). A version is valid only when its signer is an admin *of its
parent*, so an ordinary member, an outsider, or a removed admin cannot extend the cloud's chain,
while an admin may sign its own departure.

The encoding is canonical msgpack (sorted keys, no floats except times), bounded in size
because it travels inside one protocol header.
"""

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import blake3
import msgpack

from peercloud import textid
from peercloud.cloud.classes import DEFAULT_CLASSES, StorageClass
from peercloud.errors import FormatError, NotFoundError, RefusedError, UsageError
from peercloud.identity import PUBLIC_KEY_SIZE, Identity, PeerId

FORMAT_VERSION = 2
MAX_DOC_SIZE = 60 * 1024  # fits one protocol header with room to spare
MAX_MEMBERS = 256
MAX_TAGS = 8
MAX_SEQ = 1 << 62  # version numbers stay below: SQLite keeps them as signed 64-bit integers
CLOUD_ID_SIZE = 16
CLOUD_PREFIX = "cloud"
INVITE_PREFIX = "pcinv1"
ADMIN, MEMBER = "admin", "member"
_SIGN_CONTEXT = b"peercloud cloud document v2\x00"


@dataclass(frozen=True)
class Member:
    """One peer of the cloud and what it offers."""

    peer_id: PeerId
    role: str
    offer: int  # bytes of storage offered to the cloud
    tags: tuple[tuple[str, str], ...] = ()
    addresses: tuple[str, ...] = ()
    admin_since: int = 0  # the version that made it admin (seniority between admins); 0 for members

    def tag(self, key: str) -> str | None:
        """The value of one tag (such as `site`), or None."""
        return dict(self.tags).get(key)

    def to_dict(self) -> dict[str, Any]:
        """The member as it appears in the document."""
        out = {
            "peer": self.peer_id.public_key,
            "role": self.role,
            "offer": self.offer,
            "tags": {k: v for k, v in self.tags},
            "addrs": list(self.addresses),
        }
        if self.role == ADMIN:
            out["since"] = self.admin_since
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "Member":
        """Read and check one member entry."""
        if not isinstance(d, dict):
            raise FormatError("member entry is not a map")
        peer, role, offer = d.get("peer"), d.get("role"), d.get("offer")
        tags, addrs, since = d.get("tags", {}), d.get("addrs", []), d.get("since", 0)
        if not (isinstance(peer, bytes) and len(peer) == PUBLIC_KEY_SIZE):
            raise FormatError("member peer key must be 32 bytes")
        if role not in (ADMIN, MEMBER) or type(offer) is not int or offer < 0:
            raise FormatError("member role or offer malformed")
        if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
            raise FormatError("member tags malformed")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise FormatError("member tags must be text")
        if not isinstance(addrs, list) or len(addrs) > 8 or not all(isinstance(a, str) for a in addrs):
            raise FormatError("member addresses malformed")
        if type(since) is not int or (not 1 <= since < MAX_SEQ if role == ADMIN else "since" in d):
            raise FormatError("member admin_since malformed")
        return cls(PeerId(peer), role, offer, tuple(sorted(tags.items())), tuple(addrs), since)


def parse_tags(texts: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`site=home` style flags into sorted pairs."""
    out: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or len(key) > 32 or len(value) > 64:
            raise UsageError(f"a tag is KEY=VALUE (short), got {text!r}")
        out[key.strip()] = value.strip()
    if len(out) > MAX_TAGS:
        raise UsageError(f"at most {MAX_TAGS} tags")
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class CloudDoc:
    """One version of the cloud's membership and classes."""

    cloud_id: bytes
    name: str
    seq: int
    members: tuple[Member, ...]
    classes: tuple[StorageClass, ...]
    issued_at: float
    prev: bytes = b""  # hash of the version this one was built on; empty for version 1

    @classmethod
    def genesis(cls, name: str, founder: Member) -> "CloudDoc":
        """Version 1 of a new cloud: the founder as its only admin, the default classes."""
        if not 1 <= len(name) <= 64:
            raise UsageError("a cloud name is 1-64 characters")
        founder = replace(founder, role=ADMIN, admin_since=1)
        return cls(os.urandom(CLOUD_ID_SIZE), name, 1, (founder,), tuple(DEFAULT_CLASSES.values()), time.time())

    @property
    def digest(self) -> bytes:
        """Hash of the canonical body: what the next version names as `prev`."""
        return blake3.blake3(self.encode()).digest()

    def member(self, peer_id: PeerId) -> Member | None:
        """The member entry of a peer, or None for outsiders."""
        return next((m for m in self.members if m.peer_id == peer_id), None)

    def is_admin(self, peer_id: PeerId) -> bool:
        """True when the peer may sign new versions and invite."""
        found = self.member(peer_id)
        return found is not None and found.role == ADMIN

    @property
    def class_map(self) -> dict[str, StorageClass]:
        """Classes by name, in document order."""
        return {c.name: c for c in self.classes}

    @property
    def text_id(self) -> str:
        """The cloud ID as users see it."""
        return textid.encode(CLOUD_PREFIX, self.cloud_id)

    def evolve(
        self, members: Iterable[Member] | None = None, classes: Iterable[StorageClass] | None = None
    ) -> "CloudDoc":
        """The next version (built on this one), with members or classes replaced."""
        new_members = tuple(members) if members is not None else self.members
        if len(new_members) > MAX_MEMBERS:
            raise RefusedError(f"a cloud has at most {MAX_MEMBERS} members")
        if self.seq + 1 >= MAX_SEQ:
            raise RefusedError(f"the cloud document has reached its last version number ({MAX_SEQ - 1})")
        if not any(m.role == ADMIN for m in new_members):
            raise RefusedError("the cloud would have no admin left")
        return replace(
            self,
            seq=self.seq + 1,
            members=new_members,
            classes=tuple(classes) if classes is not None else self.classes,
            issued_at=time.time(),
            prev=self.digest,
        )

    def with_member(self, member: Member) -> "CloudDoc":
        """Next version with a member added or updated (in place: the list keeps its order)."""
        if self.member(member.peer_id) is None:
            return self.evolve([*self.members, member])
        return self.evolve(member if m.peer_id == member.peer_id else m for m in self.members)

    def with_role(self, peer_id: PeerId, role: str) -> "CloudDoc":
        """Next version with a member promoted to admin or demoted to member."""
        found = self.member(peer_id)
        if found is None:
            raise NotFoundError(f"{peer_id} is not a member of this cloud")
        if found.role == role:
            raise UsageError(f"{peer_id.short()} is already {'an admin' if role == ADMIN else 'a member'}")
        return self.with_member(replace(found, role=role, admin_since=self.seq + 1 if role == ADMIN else 0))

    def without_member(self, peer_id: PeerId) -> "CloudDoc":
        """Next version without a member."""
        return self.evolve(m for m in self.members if m.peer_id != peer_id)

    def encode(self) -> bytes:
        """Canonical bytes: what admins sign."""
        body = {
            "v": FORMAT_VERSION,
            "cloud": self.cloud_id,
            "name": self.name,
            "seq": self.seq,
            "members": [m.to_dict() for m in self.members],
            "classes": [c.to_dict() for c in self.classes],
            "issued": self.issued_at,
            "prev": self.prev,
        }
        data: bytes = msgpack.packb(_sorted(body), use_bin_type=True)
        if len(data) > MAX_DOC_SIZE:
            raise RefusedError(f"the cloud document would exceed {MAX_DOC_SIZE} bytes")
        return data

    @classmethod
    def decode(cls, data: bytes) -> "CloudDoc":
        """Parse untrusted bytes; every field is checked."""
        body = _unpack(data, "cloud document")
        if body.get("v") != FORMAT_VERSION:
            raise FormatError(f"cloud document version {body.get('v')!r} is not supported")
        cloud, name, seq, issued = body.get("cloud"), body.get("name"), body.get("seq"), body.get("issued")
        members, classes, prev = body.get("members"), body.get("classes"), body.get("prev")
        if not (isinstance(cloud, bytes) and len(cloud) == CLOUD_ID_SIZE):
            raise FormatError("cloud ID malformed")
        if not isinstance(name, str) or type(seq) is not int or seq < 1 or not isinstance(issued, float):
            raise FormatError("cloud name, version or time malformed")
        if seq >= MAX_SEQ:
            raise FormatError(f"cloud document version number {seq} is out of range (at most {MAX_SEQ - 1})")
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
            raise FormatError("cloud member list malformed")
        if not isinstance(classes, list) or len(classes) > 64:
            raise FormatError("cloud class list malformed")
        if not isinstance(prev, bytes) or len(prev) != (0 if seq == 1 else 32):
            raise FormatError("cloud document's parent hash malformed")
        doc = cls(
            cloud,
            name,
            seq,
            tuple(Member.from_dict(m) for m in members),
            tuple(StorageClass.from_dict(c) for c in classes),
            issued,
            prev,
        )
        if len({m.peer_id for m in doc.members}) != len(doc.members) or len(doc.class_map) != len(doc.classes):
            raise FormatError("cloud document lists a member or class twice")
        if seq == 1 and any(m.role == ADMIN and m.admin_since != 1 for m in doc.members):
            raise FormatError("cloud document version 1 gives an admin a seniority other than 1")
        if doc.encode() != data:
            raise FormatError("cloud document is not in canonical form")
        return doc


@dataclass(frozen=True)
class SignedDoc:
    """A document version with the admin signature that makes it valid."""

    doc: CloudDoc
    body: bytes
    signer: PeerId
    signature: bytes

    @classmethod
    def create(cls, doc: CloudDoc, identity: Identity) -> "SignedDoc":
        """Sign a version (the caller checks that `identity` is an admin)."""
        body = doc.encode()
        return cls(doc, body, identity.peer_id, identity.sign(_SIGN_CONTEXT + body))

    def encode(self) -> bytes:
        """Bytes for disk and the wire."""
        data: bytes = msgpack.packb(
            {"doc": self.body, "sig": self.signature, "signer": self.signer.public_key}, use_bin_type=True
        )
        return data

    @classmethod
    def decode(cls, data: bytes) -> "SignedDoc":
        """Parse and check the signature; a tampered or forged document raises IntegrityError."""
        outer = _unpack(data, "signed cloud document")
        body, sig, signer = outer.get("doc"), outer.get("sig"), outer.get("signer")
        if not (isinstance(body, bytes) and isinstance(sig, bytes) and isinstance(signer, bytes)):
            raise FormatError("signed cloud document malformed")
        if len(signer) != PUBLIC_KEY_SIZE or len(outer) != 3:
            raise FormatError("signed cloud document malformed")
        peer = PeerId(signer)
        if not peer.verify(sig, _SIGN_CONTEXT + body):
            raise FormatError("cloud document signature does not match: it was forged or altered")
        doc = CloudDoc.decode(body)
        if doc.seq == 1 and not doc.is_admin(peer):
            raise FormatError(f"cloud document signed by {peer.short()}, who is not its founder")
        return cls(doc, body, peer, sig)  # later versions: `history.check_child` judges the signer

    @property
    def digest(self) -> bytes:
        """Hash of the body: the next version's `prev`, and the last tie-break between branches."""
        return blake3.blake3(self.body).digest()


@dataclass(frozen=True)
class Invite:
    """A one-time invitation: where to find an admin, and the secret that admin will accept once."""

    cloud_id: bytes
    admin: PeerId
    addresses: tuple[str, ...]
    secret: bytes
    expires: float | None
    directories: tuple[str, ...] = ()  # PEERID@HOST:PORT of the admin's directories: the joiner uses them too
    relays: tuple[str, ...] = ()  # and of its relays

    def __str__(self) -> str:
        body: dict[str, Any] = {
            "c": self.cloud_id,
            "a": self.admin.public_key,
            "h": list(self.addresses),
            "s": self.secret,
        }
        if self.expires is not None:
            body["e"] = self.expires
        if self.directories:
            body["d"] = list(self.directories)
        if self.relays:
            body["r"] = list(self.relays)
        return textid.encode(INVITE_PREFIX, msgpack.packb(body, use_bin_type=True))

    @classmethod
    def parse(cls, text: str) -> "Invite":
        """Read an invite token a user pasted."""
        try:
            raw = textid.decode(INVITE_PREFIX, text, None, "invite token")
        except ValueError as e:
            raise UsageError(str(e)) from None
        try:
            body = _unpack(raw, "invite token")
            cloud, admin, addrs, secret = body["c"], body["a"], body["h"], body["s"]
            expires, directories, relays = body.get("e"), body.get("d", []), body.get("r", [])
            ok = (
                isinstance(cloud, bytes)
                and len(cloud) == CLOUD_ID_SIZE
                and isinstance(admin, bytes)
                and len(admin) == PUBLIC_KEY_SIZE
                and isinstance(addrs, list)
                and all(isinstance(a, str) for a in addrs)
                and isinstance(secret, bytes)
                and len(secret) == 32
                and (expires is None or isinstance(expires, float))
                and all(
                    isinstance(v, list) and len(v) <= 8 and all(isinstance(d, str) and len(d) <= 200 for d in v)
                    for v in (directories, relays)
                )
            )
        except (FormatError, KeyError):
            ok = False
        if not ok:
            raise UsageError("invite token malformed: ask the admin for a new one")
        return cls(cloud, PeerId(admin), tuple(addrs), secret, expires, tuple(directories), tuple(relays))

    @property
    def secret_hash(self) -> bytes:
        """What the admin stores: the token itself never touches its disk."""
        return blake3.blake3(self.secret).digest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_DOC_SIZE + 256:
        raise FormatError(f"{what} too large")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=4096,
            max_bin_len=MAX_DOC_SIZE,
            max_array_len=MAX_MEMBERS,
            max_map_len=MAX_MEMBERS,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types for malformed input
        raise FormatError(f"{what} is not valid msgpack: {type(e).__name__}") from None
    if not isinstance(body, dict):
        raise FormatError(f"{what} is not a map")
    return body
