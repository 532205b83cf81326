"""The cloud document's history: which chains of versions are valid, and which branch wins.

Every version names the hash of its parent (`CloudDoc.prev`) and is signed by an admin *of that
parent*; it keeps each admin's seniority (`admin_since`) and gives a new admin the number of the
version that made it one. Two admins who edit at once build two branches on the same parent
(the last version both chains share, the *base*); every node must pick the same branch,
whatever order it heard the versions in. Each branch is judged whole, from the base to its end:

1. A branch that takes the admin role (removes or demotes) from a signer of any version of the
   other branch wins: an admin that was removed cannot keep a cloud of its own going among the
   nodes that missed its removal, even from a version older than its removal.
2. When each branch does that to the other, the branch with the more senior admin among the
   signers of those removals wins (made admin by an earlier version; the founder first), so
   neither can win by retrying until its hash comes out lower.
3. Otherwise the branch whose first version has the lower hash wins, and the admin whose
   version lost signs its change again on top of the winner (`rebase`): both changes survive,
   in one order. Branch length does not matter: nobody wins by signing many versions.

Pure functions, no I/O; `node/docchain.py` fetches versions and applies the verdicts.
"""

from collections.abc import Iterable, Sequence
from dataclasses import replace

from peercloud.cloud.classes import StorageClass
from peercloud.cloud.document import ADMIN, MAX_SEQ, CloudDoc, Member, SignedDoc
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
    for member in doc.members:
        if member.admin_since != _since(parent.doc, member, doc.seq):
            raise RefusedError(
                f"cloud document version {doc.seq} gives {member.peer_id.short()} admin seniority "
                f"{member.admin_since}, not {_since(parent.doc, member, doc.seq)}"
            )


def _since(parent: CloudDoc, member: Member, seq: int) -> int:
    """The `admin_since` a member must have in version `seq` built on `parent`: an admin keeps its
    own, a new admin gets `seq`, a member has none (0)."""
    if member.role != ADMIN:
        return 0
    before = parent.member(member.peer_id)
    return before.admin_since if before is not None and before.role == ADMIN else seq


def ousts(parent: CloudDoc, child: CloudDoc, peer: PeerId) -> bool:
    """True when version `child` of `parent` takes the admin role from `peer` (removed or demoted)."""
    return parent.is_admin(peer) and not child.is_admin(peer)


def seniority(doc: CloudDoc, peer: PeerId) -> tuple[int, bytes]:
    """Sort key among the admins of `doc`: promoted earlier first (the founder at 1)."""
    member = doc.member(peer)
    since = member.admin_since if member is not None and member.role == ADMIN else MAX_SEQ
    return (since, peer.public_key)


def ousters(base: SignedDoc, branch: Sequence[SignedDoc], peers: Iterable[PeerId]) -> list[tuple[int, bytes]]:
    """The seniority of the signer (when it signed) of each version of `branch`, built on `base`,
    that takes the admin role from one of `peers`."""
    targets = set(peers)
    found: list[tuple[int, bytes]] = []
    parent = base.doc
    for version in branch:
        if any(ousts(parent, version.doc, p) for p in targets):
            found.append(seniority(parent, version.signer))
        parent = version.doc
    return found


def branch_wins(base: SignedDoc, xs: Sequence[SignedDoc], ys: Sequence[SignedDoc]) -> bool:
    """Whether branch `xs` beats branch `ys`, both built on `base` (see the module's rules).
    Antisymmetric: exactly one of two branches that differ from their first version wins."""
    if not xs or not ys or xs[0].digest == ys[0].digest:
        return False
    x_ousts = ousters(base, xs, {v.signer for v in ys})
    y_ousts = ousters(base, ys, {v.signer for v in xs})
    if bool(x_ousts) != bool(y_ousts):
        return bool(x_ousts)
    if x_ousts and min(x_ousts) != min(y_ousts):
        return min(x_ousts) < min(y_ousts)
    return xs[0].digest < ys[0].digest


def wins(x: SignedDoc, y: SignedDoc, parent: SignedDoc) -> bool:
    """Whether child `x` of `parent` beats its sibling `y` (branches of one version each)."""
    return branch_wins(parent, [x], [y])


def rebase(parent: CloudDoc, mine: CloudDoc, onto: CloudDoc) -> CloudDoc | None:
    """Our change (`parent` -> `mine`) made again on top of `onto`; None when it changes nothing
    there (the winner did the same, or removed what it touched).

    Only what our change changed is carried over, field by field: a member's role only when we
    changed it and the winner did not, so a re-applied change never brings back a role the
    winner took away, nor undoes one it gave."""
    before = {x.peer_id: x for x in parent.members}
    after = {x.peer_id: x for x in mine.members}
    seq = onto.seq + 1  # the version we sign now
    members: list[Member] = []
    for theirs in onto.members:
        p = theirs.peer_id
        old, ours = before.get(p), after.get(p)
        if old is None and ours is None:
            members.append(theirs)  # joined in the winner's branch only
        elif ours is not None and (old is None or old == ours):
            members.append(theirs)  # untouched by us, or both admitted it: the winner's entry
        elif ours is not None and old is not None:
            members.append(_merge(old, ours, theirs, seq))
        # else: we removed it
    for p, ours in after.items():
        if p not in before and onto.member(p) is None:  # joined in our version (not members the
            # winner removed: changing one of those is no reason to bring it back)
            members.append(replace(ours, admin_since=seq if ours.role == ADMIN else 0))
    classes: tuple[StorageClass, ...] = onto.classes
    if mine.classes != parent.classes:
        old_classes, new_classes = parent.class_map, mine.class_map
        kept = [c for c in onto.classes if c.name not in old_classes or c.name in new_classes]  # our removals
        names = {c.name for c in kept}
        classes = tuple(kept) + tuple(
            c for name, c in new_classes.items() if name not in names and old_classes.get(name) != c
        )
    if tuple(members) == onto.members and classes == onto.classes:
        return None
    return onto.evolve(members, classes)


def _merge(old: Member, ours: Member, theirs: Member, seq: int) -> Member:
    """The winner's entry for a member, with the fields our change changed (`old` -> `ours`)."""
    merged = theirs
    if ours.offer != old.offer:
        merged = replace(merged, offer=ours.offer)
    if ours.tags != old.tags:
        merged = replace(merged, tags=ours.tags)
    if ours.addresses != old.addresses:
        merged = replace(merged, addresses=ours.addresses)
    winner_kept_role = (theirs.role, theirs.admin_since) == (old.role, old.admin_since)
    if ours.role != old.role and winner_kept_role:
        merged = replace(merged, role=ours.role, admin_since=seq if ours.role == ADMIN else 0)
    return merged
