"""Credit windows: who grants, when, and what happens when a peer overruns its credit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cloudtolocalllm.protocol import (
    Cancel,
    Connection,
    ConnectionProtocolError,
    Credit,
    Data,
    End,
    ErrorCode,
    Frame,
    Limits,
    LocalProtocolError,
    Open,
    ResponseHead,
    StreamClosedError,
    StreamProtocolError,
    decode,
    encode,
)

from .conftest import Pair

Relay = Callable[[Frame], "Frame | None"]
Opener = Callable[..., int]
WINDOW = 1000  # SMALL_LIMITS in conftest


def test_both_directions_start_with_the_initial_window(
    cloud: Connection, bridge: Connection, open_stream: Opener
) -> None:
    sid = open_stream()
    assert cloud.send_window(sid) == WINDOW
    assert bridge.send_window(sid) == WINDOW


def test_receiver_grants_back_once_half_the_window_is_consumed(
    cloud: Connection, bridge: Connection, to_bridge: Relay, open_stream: Opener
) -> None:
    sid = open_stream()
    to_bridge(Data(sid, b"x" * 600))
    assert cloud.send_window(sid) == 400
    assert bridge.buffered_bytes == 600
    assert bridge.consumed(sid, 400) is None  # 400 < 500: not worth a frame yet
    credit = bridge.consumed(sid, 200)
    assert credit == Credit(sid, 600)
    assert bridge.buffered_bytes == 0
    assert cloud.receive(bridge.send(credit)) == credit
    assert cloud.send_window(sid) == WINDOW


def test_response_direction_is_credited_by_the_cloud(
    cloud: Connection, bridge: Connection, to_cloud: Relay, open_stream: Opener
) -> None:
    sid = open_stream(has_body=False)
    to_cloud(ResponseHead(sid, 200, []))
    to_cloud(Data(sid, b"y" * WINDOW))
    assert bridge.send_window(sid) == 0
    with pytest.raises(LocalProtocolError, match="1 bytes of Data on stream 1 exceed the credit") as info:
        bridge.send(Data(sid, b"y"))
    assert info.value.code is ErrorCode.FLOW_CONTROL
    credit = cloud.consumed(sid, WINDOW)
    assert credit is not None
    bridge.receive(cloud.send(credit))
    assert bridge.send_window(sid) == WINDOW


def test_peer_overrunning_its_credit_fails_the_stream(bridge: Connection, open_stream: Opener) -> None:
    sid = open_stream()
    with pytest.raises(StreamProtocolError) as info:
        bridge.receive(encode(Data(sid, b"z" * (WINDOW + 1))))  # bypasses the cloud's own check
    err = info.value
    assert err.code is ErrorCode.FLOW_CONTROL
    assert err.reason == "1001 bytes of Data on stream 1 exceed its credit of 1000"
    assert err.reply.error_code is ErrorCode.FLOW_CONTROL
    assert bridge.stream_ids == ()
    assert bridge.buffered_bytes == 0


def test_overrun_after_partial_use(bridge: Connection, open_stream: Opener) -> None:
    sid = open_stream()
    bridge.receive(encode(Data(sid, b"z" * 700)))
    with pytest.raises(StreamProtocolError, match="400 bytes of Data on stream 1 exceed its credit of 300"):
        bridge.receive(encode(Data(sid, b"z" * 400)))


def test_consumed_rules(bridge: Connection, to_bridge: Relay, open_stream: Opener) -> None:
    sid = open_stream()
    to_bridge(Data(sid, b"a" * 10))
    with pytest.raises(LocalProtocolError, match="consumed 11 bytes on stream 1 but only 10 are unconsumed"):
        bridge.consumed(sid, 11)
    with pytest.raises(LocalProtocolError, match=r"consumed a negative number of bytes \(-1\)"):
        bridge.consumed(sid, -1)
    to_bridge(Data(sid, b"a" * 590))
    to_bridge(End(sid))
    # The body is complete: consuming frees memory but grants nothing.
    assert bridge.consumed(sid, 600) is None
    assert bridge.buffered_bytes == 0
    assert bridge.consumed(99, 5) is None  # unknown/ended stream: nothing to grant


def test_credit_frames_are_checked(cloud: Connection, bridge: Connection, open_stream: Opener) -> None:
    sid = open_stream()
    with pytest.raises(StreamProtocolError, match="Credit of 0 bytes on stream 1"):
        cloud.receive(encode(Credit(sid, 0)))
    sid = open_stream()
    with pytest.raises(StreamProtocolError, match="Credit on stream 3 overflows the window") as info:
        cloud.receive(encode(Credit(sid, 2**31 - 1)))
    assert info.value.code is ErrorCode.FLOW_CONTROL
    assert cloud.receive(encode(Credit(sid, 5))) is None  # late credit for a reset stream: ignored
    with pytest.raises(ConnectionProtocolError, match="Credit for stream 9, which was never opened"):
        cloud.receive(encode(Credit(9, 5)))


def test_buffered_bytes_are_bounded_by_the_windows(
    handshake: Callable[[Limits], tuple[Connection, Connection]],
) -> None:
    cloud, bridge = handshake(Limits(max_frame_bytes=4096, initial_window=3000, max_concurrent_streams=4))
    for _ in range(4):
        sid = cloud.next_stream_id
        bridge.receive(cloud.send(Open(sid, "POST", "/api/blobs/sha256:ab", "", [], True)))
        while (n := min(cloud.send_window(sid), cloud.max_data_payload)) > 0:
            bridge.receive(cloud.send(Data(sid, b"\0" * n)))
    assert bridge.buffered_bytes == 4 * 3000


async def test_wait_for_credit_resumes_when_credit_arrives(
    cloud: Connection, bridge: Connection, to_bridge: Relay, open_stream: Opener
) -> None:
    sid = open_stream()
    assert await cloud.wait_for_credit(sid) == WINDOW
    to_bridge(Data(sid, b"q" * WINDOW))
    waiter = asyncio.create_task(cloud.wait_for_credit(sid))
    await asyncio.sleep(0)
    assert not waiter.done()
    credit = bridge.consumed(sid, WINDOW)
    assert credit is not None
    cloud.receive(encode(credit))
    assert await asyncio.wait_for(waiter, 1) == WINDOW


async def test_wait_for_credit_is_capped_by_the_frame_size(
    handshake: Callable[[Limits], tuple[Connection, Connection]],
) -> None:
    cloud, bridge = handshake(Limits(max_frame_bytes=4096, initial_window=100_000, max_concurrent_streams=1))
    bridge.receive(cloud.send(Open(1, "POST", "/api/create", "", [], True)))
    n = await cloud.wait_for_credit(1)
    assert n == cloud.max_data_payload == 4096 - 12
    assert len(cloud.send(Data(1, b"x" * n))) <= cloud.max_frame_bytes


async def test_wait_for_credit_ends_when_the_peer_cancels(
    cloud: Connection, bridge: Connection, to_bridge: Relay, to_cloud: Relay, open_stream: Opener
) -> None:
    sid = open_stream()
    to_bridge(Data(sid, b"q" * WINDOW))
    waiter = asyncio.create_task(cloud.wait_for_credit(sid))
    await asyncio.sleep(0)
    to_cloud(Cancel(sid, "backend gone"))
    with pytest.raises(StreamClosedError, match="stream 1 ended: backend gone") as info:
        await asyncio.wait_for(waiter, 1)
    assert info.value.code is ErrorCode.CANCELLED


async def test_wait_for_credit_ends_when_the_connection_closes(
    cloud: Connection, to_bridge: Relay, open_stream: Opener
) -> None:
    sid = open_stream()
    to_bridge(Data(sid, b"q" * WINDOW))
    waiter = asyncio.create_task(cloud.wait_for_credit(sid))
    await asyncio.sleep(0)
    assert cloud.close(code=ErrorCode.BACKEND_UNREACHABLE, reason="bridge lost") == [sid]
    with pytest.raises(StreamClosedError, match="stream 1 ended: bridge lost") as info:
        await asyncio.wait_for(waiter, 1)
    assert info.value.code is ErrorCode.BACKEND_UNREACHABLE


async def test_wait_for_credit_after_end(cloud: Connection, to_bridge: Relay, open_stream: Opener) -> None:
    sid = open_stream(has_body=False)
    with pytest.raises(LocalProtocolError, match="stream 1: this side already sent End"):
        await cloud.wait_for_credit(sid)
    with pytest.raises(LocalProtocolError, match="Data on stream 3, which was never opened"):
        await cloud.wait_for_credit(3)


def test_credit_frames_round_trip(bridge: Connection, to_bridge: Relay, open_stream: Opener) -> None:
    sid = open_stream()
    to_bridge(Data(sid, b"x" * 500))
    credit = bridge.consumed(sid, 500)
    assert credit is not None
    assert decode(encode(credit), max_frame_bytes=64) == Credit(sid, 500)


def test_frames_that_do_not_divide_half_the_window_hold_back_little_credit() -> None:
    # A sender that spent its whole window waits for credit a round trip away; what the receiver has
    # consumed but not granted back is lost from every round trip. uvloop reads uploads 256,000 bytes at a
    # time, and under a half-window rule a 1 MiB window then moved only 768,000 bytes per round trip.
    window = 1024 * 1024
    pair = Pair(Limits(max_frame_bytes=300_000, initial_window=window, max_concurrent_streams=3))
    sid = pair.open()
    for _ in range(10):  # ten round trips: each sends all the credit there is, the bridge consumes it all
        sent = 0
        credits = []
        while allowed := min(pair.cloud.send_window(sid), 256_000):
            pair.to_bridge(Data(sid, b"x" * allowed))
            sent += allowed
            if (credit := pair.bridge.consumed(sid, allowed)) is not None:
                credits.append(credit)
        for credit in credits:  # the Credits reach the sender a round trip later
            pair.to_cloud(credit)
    assert sent > window - 64 * 1024  # the last round trip moved nearly a whole window
    assert window - pair.cloud.send_window(sid) < 64 * 1024  # and nearly all of it is credit again
