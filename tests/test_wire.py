"""The wire protocol driven in memory: no sockets, time passed in by hand."""

import os
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.identity import Identity
from peercloud.wire import frames
from peercloud.wire import messages as m
from peercloud.wire.connection import (
    Closed,
    Established,
    Limits,
    Notice,
    PeerConnection,
    Request,
    Response,
    State,
    Timeout,
)

HELLO = m.Hello(m.PROTOCOL_VERSION, ("blocks",), "test", ("127.0.0.1:1",))


def pump(a: PeerConnection, b: PeerConnection, now: float = 0.0) -> None:
    """Move bytes both ways until both are quiet."""
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = b"".join(src.data_to_send())
            if data:
                dst.receive_data(data, now)
                moved = True


def events(c: PeerConnection) -> list[object]:
    out = []
    while (e := c.next_event()) is not None:
        out.append(e)
    return out


def connected(
    expected: bool = True, limits: Limits | None = None
) -> tuple[PeerConnection, PeerConnection, Identity, Identity]:
    ia, ib = Identity.generate(), Identity.generate()
    a = PeerConnection(True, ia, HELLO, 0.0, expected_peer=ib.peer_id if expected else None)
    b = PeerConnection(False, ib, HELLO, 0.0, limits=limits or Limits())
    pump(a, b)
    return a, b, ia, ib


def test_handshake_binds_peer_ids_and_exchanges_hello() -> None:
    a, b, ia, ib = connected()
    ea, eb = events(a), events(b)
    assert ea == [Established(ib.peer_id, HELLO)]
    assert eb == [Established(ia.peer_id, HELLO)]
    assert a.state is State.OPEN
    assert b.state is State.OPEN


def test_wrong_peer_key_is_refused_with_clear_reason() -> None:
    ia, ib, other = Identity.generate(), Identity.generate(), Identity.generate()
    a = PeerConnection(True, ia, HELLO, 0.0, expected_peer=other.peer_id)
    b = PeerConnection(False, ib, HELLO, 0.0)
    pump(a, b)
    (closed,) = events(a)
    assert isinstance(closed, Closed)
    assert closed.error
    assert f"dialed {other.peer_id} but reached {ib.peer_id}" in closed.reason
    b.handle_timer(11.0)
    assert isinstance(events(b)[-1], Closed)


def test_wrong_protocol_version_closes_both_sides() -> None:
    ia, ib = Identity.generate(), Identity.generate()
    a = PeerConnection(True, ia, m.Hello(99), 0.0)
    b = PeerConnection(False, ib, HELLO, 0.0)
    pump(a, b)
    (closed_b,) = events(b)
    assert isinstance(closed_b, Closed)
    assert "peer speaks protocol version 99; this peercloud speaks 1" in closed_b.reason
    closed_a = events(a)[-1]  # a (the newer side here) learns why over the encrypted channel
    assert isinstance(closed_a, Closed)
    assert closed_a.reason.startswith("peer reported: version:")


def test_pipelined_requests_responses_and_cancel() -> None:
    a, b, _, _ = connected()
    events(a), events(b)
    ids = [a.request(m.GetBlock(a.new_id(), bytes([i]) * 32), 0.0) for i in range(5)]
    a.cancel(ids[4])
    pump(a, b)
    reqs = [e for e in events(b) if isinstance(e, Request)]
    assert [r.message.id for r in reqs] == ids[:5]  # type: ignore[attr-defined]
    payload = b"x" * 200_000  # spans several Noise records
    for r in reqs:
        msg = r.message
        assert isinstance(msg, m.GetBlock)
        b.respond(msg.id, m.BlockData(msg.id, msg.block), payload)
    pump(a, b)
    got = [e for e in events(a) if isinstance(e, Response)]
    assert [g.request_id for g in got] == ids[:4]  # the cancelled one is dropped
    assert all(g.payload == payload for g in got)


def test_ping_is_answered_by_the_state_machine_and_timeouts_fire() -> None:
    a, b, _, _ = connected()
    events(a)
    rid = a.request(m.Ping(a.new_id()), 0.0)
    pump(a, b)
    assert events(a) == [Response(rid, m.Pong(rid))]
    lost = a.request(m.GetBlock(a.new_id(), b"\x00" * 32), 0.0, timeout=5.0)
    assert a.next_timer() == 5.0
    a.handle_timer(5.0)
    assert events(a) == [Timeout(lost)]


def test_a_request_after_a_quiet_spell_gets_its_whole_timeout() -> None:
    # The deadline counts from when the request is sent: a link that received nothing for 20 s
    # must not give a 15 s ping a deadline already past (it dropped healthy idle links).
    a, b, _, _ = connected()
    events(a)
    rid = a.request(m.Ping(a.new_id()), 20.0, timeout=15.0)
    assert a.next_timer() == 35.0
    a.handle_timer(20.001)
    pump(a, b)
    assert events(a) == [Response(rid, m.Pong(rid))]


def test_inflight_limit_answers_busy() -> None:
    a, b, _, _ = connected(limits=Limits(max_inflight=2))
    events(a)
    ids = [a.request(m.GetBlock(a.new_id(), b"\x01" * 32), 0.0) for _ in range(3)]
    pump(a, b)
    responses = [e for e in events(a) if isinstance(e, Response)]
    assert responses == [Response(ids[2], m.Error(ids[2], "busy", "too many requests in flight"))]


def test_answer_with_a_different_block_closes_connection() -> None:
    a, b, _, _ = connected()
    events(a), events(b)
    rid = a.request(m.GetBlock(a.new_id(), b"\x01" * 32), 0.0)
    pump(a, b)
    assert isinstance(events(b)[0], Request)
    b.respond(rid, m.BlockData(rid, b"\x02" * 32), b"data")
    pump(a, b)
    closed = events(a)[-1]
    assert isinstance(closed, Closed)
    assert "not asked for" in closed.reason


def test_bye_and_connection_lost() -> None:
    a, b, _, _ = connected()
    events(a), events(b)
    a.close("shutting down")
    pump(a, b)
    assert events(b) == [Closed("peer closed: shutting down", False)]
    a2, _, _, _ = connected()
    a2.connection_lost()
    assert isinstance(events(a2)[-1], Closed)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=3000))
def test_garbage_before_handshake_closes_cleanly(garbage: bytes) -> None:
    b = PeerConnection(False, Identity.generate(), HELLO, 0.0)
    b.receive_data(garbage, 0.0)
    b.handle_timer(20.0)
    evs = events(b)
    assert len(evs) == 1
    assert isinstance(evs[0], Closed)
    assert evs[0].error
    assert b.state is State.CLOSED


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=2000))
def test_garbage_after_handshake_closes_cleanly(garbage: bytes) -> None:
    _a, b, _, _ = connected()
    events(b)
    b.receive_data(garbage, 1.0)  # not valid Noise records: authentication fails or waits for more
    b.receive_data(b"\x00" * 70_000, 1.0)  # completes any record a u16 length can announce
    closed = events(b)[-1]
    assert isinstance(closed, Closed)
    assert closed.error
    b.data_to_send()
    b.receive_data(b"more", 2.0)  # a closed connection ignores everything after
    assert b.next_event() is None


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=300), payload=st.binary(max_size=50))
def test_frame_decoder_rejects_garbage_headers(header: bytes, payload: bytes) -> None:
    frame = struct.pack(">IH", 2 + len(header) + len(payload), len(header)) + header + payload
    try:
        out = frames.FrameDecoder().feed(frame)
    except m.ProtocolError:
        return
    assert len(out) == 1
    assert isinstance(out[0][0], m.Message)


@settings(max_examples=200, deadline=None)
@given(
    msg=st.one_of(
        st.builds(m.GetBlock, st.integers(1, 2**62), st.binary(min_size=32, max_size=32)),
        st.builds(m.Have, st.binary(min_size=32, max_size=32), st.binary(max_size=100), st.integers(0, 1000)),
        st.builds(m.Error, st.integers(0, 2**62), st.sampled_from(m.ERROR_CODES), st.text(max_size=50)),
        st.builds(m.Hello, st.integers(0, 5), st.lists(st.text(max_size=8), max_size=4).map(tuple)),
    ),
    split=st.integers(1, 50),
)
def test_frames_round_trip_in_any_chunking(msg: m.Message, split: int) -> None:
    data = b"".join(frames.encode_frame(msg))
    decoder = frames.FrameDecoder()
    got = []
    for i in range(0, len(data), split):
        got += decoder.feed(data[i : i + split])
    assert got == [(msg, b"")]


def test_frame_limits() -> None:
    with pytest.raises(m.ProtocolError, match="exceeds the limit"):
        frames.FrameDecoder().feed(struct.pack(">IH", frames.MAX_FRAME_BODY + 1, 10))
    with pytest.raises(m.ProtocolError, match="header or payload length"):
        frames.FrameDecoder().feed(struct.pack(">IH", 5, 10))
    ping = msgpack.packb({"t": "ping", "id": 1})
    with pytest.raises(m.ProtocolError, match="payload"):
        frames.FrameDecoder().feed(struct.pack(">IH", 2 + len(ping) + 3, len(ping)) + ping + b"abc")
    for bad in (
        {"t": "ping", "id": 0},
        {"t": "get", "id": 1, "block": b"short"},
        {1: 2, "t": "ping", "id": 1},
        {"t": "have", "object": b"o" * 32, "bitmap": b"\xff", "offset": 2**40},
        {"t": "ping"},
        {"t": "ping", "id": -1},
        {"t": "ping", "id": "1"},
        {"t": "nope"},
        {"t": "ping", "id": 1, "extra": 2},
        {"t": "hello", "version": 1, "features": [1]},
    ):
        with pytest.raises(m.ProtocolError):
            m.decode_header(msgpack.packb(bad))


def test_cancel_keeps_the_slot_until_the_handler_finishes() -> None:
    a, b, _, _ = connected(limits=Limits(max_inflight=2))
    events(a), events(b)
    for _ in range(5):  # get + cancel must not let the peer exceed max_inflight running handlers
        rid = a.request(m.GetBlock(a.new_id(), b"\x03" * 32), 0.0)
        a.cancel(rid)
    pump(a, b)
    requests = [e for e in events(b) if isinstance(e, Request)]
    assert len(requests) == 2
    for r in requests:  # handlers finish; the cancelled answers are not sent
        assert isinstance(r.message, m.GetBlock)
        b.respond(r.message.id, m.BlockData(r.message.id, r.message.block), b"x")
    assert b.data_to_send() == []


def test_timeout_cancels_at_the_peer() -> None:
    a, b, _, _ = connected()
    events(a), events(b)
    a.request(m.GetBlock(a.new_id(), b"\x04" * 32), 0.0, timeout=1.0)
    pump(a, b)
    a.handle_timer(2.0)
    pump(a, b)
    assert [type(e) for e in events(b)] == [Request, Notice]


def test_a_payload_larger_than_the_first_buffer_arrives_whole() -> None:
    # Records after the first land in the payload buffer in place; past PREALLOCATE it grows.
    a, b, _, _ = connected()
    events(a), events(b)
    rid = a.request(m.GetBlock(a.new_id(), b"\x07" * 32), 0.0)
    pump(a, b)
    payload = os.urandom(frames.PREALLOCATE * 2 + 12345)
    b.respond(rid, m.BlockData(rid, b"\x07" * 32), payload)
    pump(a, b)
    (got,) = [e for e in events(a) if isinstance(e, Response)]
    assert bytes(got.payload) == payload


def test_the_decoder_offers_room_only_inside_a_kept_payload() -> None:
    d = frames.FrameDecoder()
    frame = b"".join(frames.encode_frame(m.BlockData(1, b"a" * 32), b"z" * 100_000))
    assert d.payload_room(10) is None  # no frame yet
    assert d.feed(frame[:1000]) == []
    assert d.payload_room(len(frame)) is None  # more than the payload has left
    room = d.payload_room(len(frame) - 1000)
    assert room is not None
    room[:] = frame[1000:]
    room.release()
    ((msg, body),) = d.advance(len(frame) - 1000)
    assert isinstance(msg, m.BlockData) and bytes(body) == b"z" * 100_000
    assert d.payload_room(1) is None


def test_frames_of_every_size_cross_record_boundaries_intact() -> None:
    # Sizes around one record: a frame ending exactly at, just before and just after a record.
    a, b, _, _ = connected()
    events(a), events(b)
    for size in (0, 1, 65_519 - 60, 65_519 - 40, 65_519, 65_519 * 2 + 5):
        rid = a.request(m.GetBlock(a.new_id(), b"\x09" * 32), 0.0)
        pump(a, b)
        payload = os.urandom(size)
        b.respond(rid, m.BlockData(rid, b"\x09" * 32), payload)
        pump(a, b)
        (got,) = [e for e in events(a) if isinstance(e, Response)]
        assert bytes(got.payload) == payload


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=200_000), max_size=12),
    sizes=st.lists(st.sampled_from([0, 1, 65_000, 65_519, 300_000]), min_size=1, max_size=3),
)
def test_records_cut_anywhere_by_the_network_arrive_intact(cuts: list[int], sizes: list[int]) -> None:
    # Records are opened straight from the piece that arrived; a record the piece's end cuts
    # (its length prefix included) is completed from the next pieces.
    a, b, _, _ = connected()
    events(a), events(b)
    payloads = {}
    for size in sizes:
        rid = a.request(m.GetBlock(a.new_id(), b"\x0a" * 32), 0.0)
        pump(a, b)
        payloads[rid] = os.urandom(size)
        b.respond(rid, m.BlockData(rid, b"\x0a" * 32), payloads[rid])
    wire = b"".join(b.data_to_send())
    at = 0
    for cut in [*cuts, len(wire)]:
        a.receive_data(memoryview(wire)[at : at + cut], 0.0)
        at += cut
        if at >= len(wire):
            break
    got = {e.request_id: bytes(e.payload) for e in events(a) if isinstance(e, Response)}
    assert got == payloads and a.state is State.OPEN


def test_records_right_behind_the_last_handshake_message_are_read() -> None:
    # The initiator may send its first request in the same piece as the handshake's last message.
    ia, ib = Identity.generate(), Identity.generate()
    a = PeerConnection(True, ia, HELLO, 0.0, expected_peer=ib.peer_id)
    b = PeerConnection(False, ib, HELLO, 0.0)
    b.receive_data(b"".join(a.data_to_send()), 0.0)  # message 1
    a.receive_data(b"".join(b.data_to_send()), 0.0)  # message 2: a is open
    rid = a.request(m.Ping(a.new_id()), 0.0)
    b.receive_data(b"".join(a.data_to_send()), 0.0)  # message 3 and the ping, in one piece
    a.receive_data(b"".join(b.data_to_send()), 0.0)
    assert any(isinstance(e, Response) and e.request_id == rid for e in events(a))
