"""Hostile byte streams against the sans-IO connection: tiny records, huge frames, unsolicited payloads."""

import os
import struct
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercloud.wire import batches, frames
from peercloud.wire import messages as m
from peercloud.wire.connection import Closed, PeerConnection, Response, State
from peercloud.wire.records import RECORD_PLAINTEXT

from .test_wire import connected, events, pump

_LEN = struct.Struct(">H")


def record(sender: PeerConnection, plaintext: bytes) -> bytes:
    """One transport record as `sender` would encrypt it (what a hostile peer can always do)."""
    assert sender._send is not None
    ct = sender._send.encrypt(b"", plaintext)
    return _LEN.pack(len(ct)) + ct


def big_frame_head(size: int) -> bytes:
    header = msgpack.packb({"t": "block", "id": 1, "block": b"\0" * 32})
    return struct.pack(">IH", 2 + len(header) + size, len(header)) + header


def test_tiny_records_inside_a_frame_close_the_connection_at_once() -> None:
    a, b, _, _ = connected()
    events(b)
    head = big_frame_head(16 * 1024 * 1024)
    b.receive_data(record(a, head[:1]), 0.0)  # the first tiny record that ends mid-frame
    assert b.state is State.CLOSED
    closed = [e for e in events(b) if isinstance(e, Closed)]
    assert closed and "record ended inside a frame" in closed[0].reason


def test_reassembly_is_linear_in_the_bytes_received() -> None:
    """A frame cut in many full records costs each byte once (the old decoder re-joined every piece)."""
    decoder = frames.FrameDecoder()
    payload = os.urandom(4 * 1024 * 1024)
    header = msgpack.packb({"t": "block", "id": 1, "block": b"\1" * 32})
    frame = struct.pack(">IH", 2 + len(header) + len(payload), len(header)) + header + payload
    started = time.process_time()
    got = []
    for i in range(0, len(frame), 1024):  # 4,100 pieces: quadratic joins would take seconds
        got += decoder.feed(frame[i : i + 1024])
    assert time.process_time() - started < 2.0
    assert len(got) == 1 and bytes(got[0][1]) == payload and not decoder.partial


def test_a_payload_nobody_asked_for_is_skipped_unbuffered() -> None:
    a, b, _, _ = connected()
    events(a)
    events(b)
    # b answers a GetBlock that a never sent: the payload is dropped as it streams, nothing is delivered.
    data = b"".join(frames.encode_frame(m.BlockData(77, b"\2" * 32), os.urandom(200_000)))
    for i in range(0, len(data), RECORD_PLAINTEXT):
        a.receive_data(record(b, data[i : i + RECORD_PLAINTEXT]), 0.0)
        assert a._frames._payload is None  # never buffered
    assert a.state is State.OPEN and not [e for e in events(a) if isinstance(e, Response)]


def test_an_answer_with_the_wrong_block_closes_before_its_payload_is_read() -> None:
    a, b, _, _ = connected()
    rid = a.new_id()
    a.request(m.GetBlock(rid, b"\3" * 32), 0.0)
    pump(a, b)
    data = b"".join(frames.encode_frame(m.BlockData(rid, b"\4" * 32), os.urandom(100_000)))
    a.receive_data(record(b, data[:RECORD_PLAINTEXT]), 0.0)
    assert a.state is State.CLOSED


def test_a_requested_block_arrives_whole_over_many_records() -> None:
    a, b, _, _ = connected()
    rid = a.new_id()
    a.request(m.GetBlock(rid, b"\5" * 32), 0.0)
    pump(a, b)
    events(a)
    payload = os.urandom(1024 * 1024)
    b.respond(next(iter(b._inflight_from_peer)), m.BlockData(rid, b"\5" * 32), payload)
    pump(a, b)
    got = [e for e in events(a) if isinstance(e, Response)]
    assert len(got) == 1 and bytes(got[0].payload) == payload


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000))
def test_batch_decoders_refuse_garbage_cleanly(data: bytes) -> None:
    try:
        items = batches.unpack_haves(data)
    except m.ProtocolError:
        return
    assert b"".join(batches.pack_haves(items)) == data  # what parses is exactly what was sent: nothing ignored


def test_batches_round_trip_and_stay_under_the_header_limit() -> None:
    haves = [batches.HaveEntry(os.urandom(32), os.urandom(i % 40), i % 2 == 0, i % 3 == 0) for i in range(5000)]
    packed = list(batches.pack_haves(haves))
    assert len(packed) > 1 and all(len(p) <= batches.BATCH_BYTES for p in packed)
    assert [e for p in packed for e in batches.unpack_haves(p)] == haves
    with pytest.raises(m.ProtocolError):
        batches.unpack_haves(packed[0][:-1] + b"")  # truncated bitmap
