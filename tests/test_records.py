"""Signed peer records: what a receiver accepts, and every way it refuses one."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercloud.connect.record import (
    MAX_RECORD,
    RECORD_CONTEXT,
    Candidate,
    Kind,
    PeerRecord,
    RecordError,
    verify,
)
from peercloud.identity import Identity

NOW = 1_800_000_000.0
ME = Identity.generate()
CANDIDATES = [Candidate(Kind.LAN, "192.168.1.7:4650"), Candidate(Kind.PUBLIC, "203.0.113.9:4650")]


def refused(raw: bytes, reason: str, **kwargs: float) -> None:
    with pytest.raises(RecordError) as e:
        verify(raw, now=kwargs.get("now", NOW), newer_than=int(kwargs.get("newer_than", -1)))
    assert e.value.reason == reason, e.value


def test_a_signed_record_verifies_and_keeps_its_bytes() -> None:
    rec = PeerRecord.sign(ME, 7, CANDIDATES, now=NOW)
    back = verify(rec.raw, now=NOW + 10)
    assert back == rec and back.peer_id == ME.peer_id and back.candidates == tuple(CANDIDATES)
    assert len(rec.raw) <= MAX_RECORD


def test_forged_records_are_refused() -> None:
    rec = PeerRecord.sign(ME, 7, CANDIDATES, now=NOW)
    body, sig = msgpack.unpackb(rec.raw)
    # Another address slipped into a signed body.
    altered = body.replace(b"203.0.113.9", b"203.0.113.6")
    refused(msgpack.packb([altered, sig]), "forged")
    # A record for ME signed by someone else.
    thief = Identity.generate()
    refused(msgpack.packb([body, thief.sign(RECORD_CONTEXT + body)]), "forged")
    # A signature over the body without the domain separation.
    refused(msgpack.packb([body, ME.sign(body)]), "forged")


def test_replayed_and_expired_records_are_refused() -> None:
    old = PeerRecord.sign(ME, 7, CANDIDATES, now=NOW)
    refused(old.raw, "replayed", newer_than=7)
    refused(old.raw, "replayed", newer_than=8)
    assert verify(old.raw, now=NOW, newer_than=6).seq == 7
    refused(old.raw, "expired", now=NOW + 3600 + 301)
    refused(PeerRecord.sign(ME, 1, CANDIDATES, now=NOW, ttl=30 * 86400).raw, "malformed")


def test_oversized_records_are_refused_and_signing_drops_what_does_not_fit() -> None:
    many = [Candidate(Kind.LAN, f"10.0.{i}.{i}:{40000 + i}" + "x" * 90) for i in range(16)]
    rec = PeerRecord.sign(ME, 1, many, now=NOW)
    assert len(rec.raw) <= MAX_RECORD and 0 < len(rec.candidates) < 16
    body, _ = msgpack.unpackb(rec.raw)
    big = msgpack.loads(body)
    big["a"] = [[c.kind.value, c.address] for c in many]
    fat = msgpack.packb(big)
    refused(msgpack.packb([fat, ME.sign(RECORD_CONTEXT + fat)]), "oversized")


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"k": b"short"},
        {"s": -1},
        {"e": "soon"},
        {"a": [["teleport", "1.2.3.4:5"]]},
        {"a": [["lan", ""]]},
        {"a": [["lan"]]},
        {"x": 1},
    ],
)
def test_malformed_bodies_are_refused(change: dict[str, object]) -> None:
    body = {"v": 1, "k": ME.peer_id.public_key, "s": 3, "e": int(NOW) + 60, "a": [["lan", "10.0.0.1:1"]]}
    body.update(change)
    raw = msgpack.packb(body)
    refused(msgpack.packb([raw, ME.sign(RECORD_CONTEXT + raw)]), "malformed")


@given(st.binary(max_size=1200))
def test_any_bytes_give_a_record_or_a_refusal(data: bytes) -> None:
    try:
        rec = verify(data, now=NOW)
    except RecordError as e:
        reason = e.reason
    else:
        reason = "accepted"
        assert rec.raw == data and len(data) <= MAX_RECORD
    assert reason in {"accepted", "forged", "expired", "oversized", "replayed", "malformed"}
