"""The cloud document's history: which chains of versions are valid, and which branch wins.

Every version names the hash of its parent (`CloudDoc.prev`) and is signed by an admin *of that
parent*. Two admins who edit at once build two children of the same parent; every node must
pick the same one, whatever order it heard them in:

1. A child that removes or demotes the other child's signer wins: an admin that was removed
   cannot keep a cloud of its own going among the nodes that missed its removal.
2. When each removes the other's signer, the senior admin's child wins (made admin by an earlier
   version; the founder first), so neither can win by retrying until its hash comes out lower.
3. Otherwise the lower hash wins, and the admin whose child lost signs its change again on top
   of the winner (`rebase`): both changes survive, in one order.

Pure functions, no I/O; `node/membership.py` fetches versions and applies the verdicts.
"""

from dataclasses import replace

from peercloud.cloud.classes import StorageClass
from peercloud.cloud.document import ADMIN, CloudDoc, Member, SignedDoc
from peercloud.errors import RefusedError
from peercloud.identity import PeerId


def check_child(parent: SignedDoc, child: SignedDoc) -> None:
    """RefusedError unless `child` is a valid next version of `parent`."""
    doc = child.doc
    if doc.cloud_id != parent.doc.cloud_id:
        raise RefusedError("cloud document belongs to another cloud")
    if doc.seq != parent.doc.seq + 1 or doc.prev != parent.digest:
        raise RefusedError(f"cloud document version {doc.seq} does not follow version {parent.doc.seq}")
    if not parent.doc.is_admin(child.signer):
        raise RefusedError(
            f"cloud document version {doc.seq} is signed by {child.signer.short()}, "
            f"who is not an admin of version {parent.doc.seq}"
        )


def ousts(version: SignedDoc, peer: PeerId) -> bool:
    """True when `version` leaves `peer` without the admin role (removed or demoted)."""
    return not version.doc.is_admin(peer)


def seniority(doc: CloudDoc, peer: PeerId) -> tuple[int, bytes]:
    """Sort key among the admins of `doc`: promoted earlier first (the founder at 1)."""
    member = doc.member(peer)
    since = member.admin_since if member is not None and member.role == ADMIN else 1 << 62
    return (since, peer.public_key)


def wins(x: SignedDoc, y: SignedDoc, parent: SignedDoc) -> bool:
    """Whether child `x` of `parent` beats its sibling `y` (see the module's rules)."""
    if x.digest == y.digest:
        return False
    x_ousts, y_ousts = ousts(x, y.signer), ousts(y, x.signer)
    if x_ousts != y_ousts:
        return x_ousts
    if x_ousts and x.signer != y.signer:
        return seniority(parent.doc, x.signer) < seniority(parent.doc, y.signer)
    return x.digest < y.digest


def rebase(parent: CloudDoc, mine: CloudDoc, onto: CloudDoc) -> CloudDoc | None:
    """Our change (`parent` -> `mine`) made again on top of `onto`; None when it changes nothing
    there (the winner did the same, or removed what it touched)."""
    before = {x.peer_id: x for x in parent.members}
    after = {x.peer_id: x for x in mine.members}
    removed = set(before) - set(after)
    changed = {p: x for p, x in after.items() if before.get(p) != x}
    for p, x in changed.items():
        if x.role == ADMIN and (p not in before or before[p].role != ADMIN):
            changed[p] = replace(x, admin_since=onto.seq + 1)  # promoted by the version we sign now
    members: list[Member] = []
    for x in onto.members:
        if x.peer_id in removed:
            continue
        members.append(changed.pop(x.peer_id, x))
    members += [x for p, x in changed.items() if p not in before]  # joined in our version (not
    # members the winner removed: changing one of those is no reason to bring it back)
    classes: tuple[StorageClass, ...] = onto.classes
    if mine.classes != parent.classes:
        old, new = parent.class_map, mine.class_map
        kept = [c for c in onto.classes if c.name not in old or c.name in new]  # our removals
        names = {c.name for c in kept}
        classes = tuple(kept) + tuple(c for name, c in new.items() if name not in names and old.get(name) != c)
    if tuple(members) == onto.members and classes == onto.classes:
        return None
    return onto.evolve(members, classes)
