"""The writer's lanes: control frames go first, but never ahead of their own stream's queued body."""

from __future__ import annotations

import asyncio

import pytest

from cloudtolocalllm.protocol import Batch, Data, End, Pong, decode, encode
from cloudtolocalllm.protocol.codec import BATCH_OVERHEAD
from cloudtolocalllm.protocol.tunnel import TransportClosed, Writer

from .waiting import wait_until


class GatedTransport:
    """A transport whose sends wait for a gate: what is queued meanwhile shows the writer's order."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.gate = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    async def send(self, data: bytes) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def receive(self) -> bytes | str:
        raise TransportClosed

    async def close(self, code: int, reason: str) -> None:
        self.close_code = code

    def abort(self) -> None:
        self.close_code = 1006


async def test_control_overtakes_body_but_not_its_own_streams_body() -> None:
    transport = GatedTransport()
    writer = Writer(transport, high_water=1 << 20)
    writer.put_body(b"first body 1", 1)
    await asyncio.sleep(0)  # the writer takes the first frame and waits at the gate
    writer.put_body(b"body 1", 1)
    writer.put_body(b"body 3", 3)
    writer.put_control(b"pong")
    writer.put_control(b"cancel 1", 1)  # stream 1 has body queued: stays behind it
    writer.put_control(b"credit 5", 5)
    transport.gate.set()
    await wait_until(lambda: len(transport.sent) == 6)
    assert transport.sent == [b"first body 1", b"pong", b"credit 5", b"body 1", b"body 3", b"cancel 1"]
    await writer.aclose()


async def test_body_waits_above_high_water_and_control_does_not() -> None:
    transport = GatedTransport()
    writer = Writer(transport, high_water=10)
    writer.put_body(b"x" * 10, 1)
    room = asyncio.create_task(writer.wait_for_room())
    await asyncio.sleep(0.05)
    assert not room.done()
    writer.put_control(b"ping")  # never waits
    transport.gate.set()
    await asyncio.wait_for(room, 5)
    assert transport.sent[:1] == [b"x" * 10] or transport.sent[:1] == [b"ping"]
    await writer.aclose()
    with pytest.raises(TransportClosed):
        await writer.wait_for_room()


async def test_the_writing_task_exists_only_while_there_is_work() -> None:
    transport = GatedTransport()
    transport.gate.set()
    writer = Writer(transport)
    assert writer._task is None
    writer.put_control(b"pong")
    assert writer._task is not None
    await wait_until(lambda: writer._task is None)  # it lingers a moment, then ends
    assert transport.sent == [b"pong"]


async def test_flush_waits_until_what_is_queued_was_written() -> None:
    transport = GatedTransport()
    writer = Writer(transport)
    writer.put_control(b"go away")
    flushing = asyncio.create_task(writer.flush(5))
    await asyncio.sleep(0.05)
    assert not flushing.done()  # the frame is still at the gate
    transport.gate.set()
    await asyncio.wait_for(flushing, 5)
    assert transport.sent == [b"go away"]
    await writer.flush(5)  # nothing queued: returns at once
    await writer.aclose()


async def test_the_task_waits_for_more_only_while_traffic_is_expected() -> None:
    transport = GatedTransport()
    transport.gate.set()
    streams_open = [True]
    writer = Writer(transport, keep_alive=lambda: streams_open[0])
    writer.put_control(b"open 1")
    await wait_until(lambda: transport.sent == [b"open 1"])
    task = writer._task
    assert task is not None  # waits for the stream's next frame instead of ending
    writer.put_body(b"data 1", 1)
    await wait_until(lambda: len(transport.sent) == 2)
    assert writer._task is task  # the same task wrote it
    streams_open[0] = False
    writer.put_control(b"credit 1", 1)
    await wait_until(lambda: writer._task is None)
    assert transport.sent == [b"open 1", b"data 1", b"credit 1"]


async def test_with_batching_what_is_queued_goes_out_together_in_order_and_within_the_limit() -> None:
    transport = GatedTransport()
    frames = [encode(Pong(1)), encode(Data(1, b"a" * 100)), encode(End(1)), encode(Data(3, b"b" * 300))]
    limit = BATCH_OVERHEAD + sum(len(frame) for frame in frames[:3])  # the last one no longer fits
    writer = Writer(transport, high_water=1 << 20, batch_bytes=limit)
    writer.put_body(b"first", 9)
    await asyncio.sleep(0)  # the writer takes the first frame and waits at the gate
    writer.put_body(frames[1], 1)
    writer.put_body(frames[2], 1)
    writer.put_control(frames[0])  # control first, as without batching
    writer.put_body(frames[3], 3)
    transport.gate.set()
    await wait_until(lambda: len(transport.sent) == 3)
    assert transport.sent[0] == b"first"
    assert decode(transport.sent[1], max_frame_bytes=limit) == Batch([Pong(1), Data(1, b"a" * 100), End(1)])
    assert transport.sent[2] == frames[3]  # alone: one frame is sent as it is, not as a Batch of one
    await wait_until(lambda: writer._queued == 0)  # the body bytes sent in the batch left the count
    await writer.aclose()
