from peercloud.cloud.classes import DEFAULT_CLASSES, StorageClass
from peercloud.cloud.keepers import keepers
from peercloud.cloud.placement import Candidate, coordinator, plan, rank

GiB = 1024**3
OID = b"\x07" * 32


def peers(n: int) -> list[bytes]:
    return [bytes([i]) * 32 for i in range(n)]


def test_replicas_fill_to_the_minimum_on_the_freest_members() -> None:
    p = peers(5)
    cands = [Candidate(x, free=(i + 1) * GiB) for i, x in enumerate(p)]
    decision = plan(OID, DEFAULT_CLASSES["replica-3"], 1, 100, {p[0]: {0}}, set(p), rank(cands))
    assert set(decision.place) == {p[4], p[3]} and not decision.release and not decision.note


def test_replicas_respect_spread_and_grow_only_where_it_holds() -> None:
    p = peers(4)
    tags = {p[0]: (("site", "home"),), p[1]: (("site", "home"),), p[2]: (("site", "work"),), p[3]: (("site", "home"),)}
    cls = StorageClass("two-sites", replicas=2, max_replicas=3, spread="site")
    cands = [Candidate(x, GiB, tags[x]) for x in p]
    decision = plan(OID, cls, 1, 100, {p[0]: {0}}, set(p), rank(cands), tags)
    assert decision.place == {p[2]: (0,)}  # the only other site; a third copy would double a site


def test_replicas_release_extras_above_max_but_not_while_a_copy_is_coming() -> None:
    p = peers(5)
    cands = [Candidate(x, GiB * (i + 1)) for i, x in enumerate(p)]
    holders = {x: {0} for x in p[:4]}
    decision = plan(OID, DEFAULT_CLASSES["replica-3"], 1, 100, holders, set(p), rank(cands))
    keep = keepers(OID, 1, 3, holders)[0]
    assert len(keep) == 3 and list(decision.release) == [x for x in p[:4] if x not in keep] and not decision.place
    assert not plan(
        OID, DEFAULT_CLASSES["replica-3"], 1, 100, holders, set(p), rank(cands), pending={p[4]: {0}}
    ).release


def test_not_enough_room_is_said() -> None:
    p = peers(3)
    decision = plan(OID, DEFAULT_CLASSES["replica-3"], 1, 10 * GiB, {p[0]: {0}}, set(p), rank([Candidate(p[1], GiB)]))
    assert not decision.place and "needs 3 copies" in decision.note


def test_ec_spreads_shares_then_releases_the_owners_provisional_copy() -> None:
    p = peers(4)
    cands = [Candidate(x, GiB) for x in p]
    owner = {p[0]: {0, 1, 2}}  # what an add leaves: every share, provisional
    first = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, {}, set(p), rank(cands), provisional=owner)
    moved = sorted(c for cols in first.place.values() for c in cols)
    assert moved == [0, 1, 2] and p[0] not in first.place and len(first.place) == 3 and not first.release
    placed = {peer: set(cols) for peer, cols in first.place.items()}
    second = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, placed, set(p), rank(cands), provisional=owner)
    assert second.release == {p[0]: (0, 1, 2)} and not second.place and not second.note


def test_ec_in_a_small_cloud_doubles_up_and_says_so() -> None:
    p = peers(2)
    cands = [Candidate(x, GiB) for x in p]
    decision = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, {}, set(p), rank(cands))
    assert sorted(c for cols in decision.place.values() for c in cols) == [0, 1, 2]
    assert "3 different peers" in decision.note


def test_coordinator_is_deterministic_and_moves_when_it_leaves() -> None:
    p = peers(5)
    oid = b"\x42" * 32
    first = coordinator(oid, p)
    assert first == coordinator(oid, list(reversed(p)))
    second = coordinator(oid, [x for x in p if x != first])
    assert second is not None and second != first
    assert coordinator(oid, []) is None


def test_ec_columns_no_member_can_take_stay_with_the_owner() -> None:
    # ec-2+1 among an owner and one other member: the other takes one column, and the two the
    # owner alone has are not doubled up there (the owner could never take one back: it would
    # leave two columns on one peer and the owner with none).
    p = peers(2)
    cands = [Candidate(x, GiB) for x in p]
    owner = {p[0]: {0, 1, 2}}
    first = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, {}, set(p), rank(cands), provisional=owner)
    assert list(first.place) == [p[1]] and len(first.place[p[1]]) == 1 and "3 different peers" in first.note
    taken = set(first.place[p[1]])
    second = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, {p[1]: taken}, set(p), rank(cands), provisional=owner)
    assert second.release == {p[0]: tuple(taken)} and not second.place
    rest = {0, 1, 2} - taken  # once released, the owner keeps the rest for real
    third = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, {p[1]: taken}, set(p), rank(cands), provisional={p[0]: rest})
    assert third.place == {p[0]: tuple(sorted(rest))} and not third.release
    done = plan(OID, DEFAULT_CLASSES["ec-2+1"], 3, 100, {p[1]: taken, p[0]: rest}, set(p), rank(cands))
    assert not done.place and not done.release
