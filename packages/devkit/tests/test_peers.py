"""The fake cloud and the fake bridge against each other, over a real WebSocket: what each test of a real end
relies on them for (streams, credit held back and granted, cancels, silence, refusals)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import InvalidStatus

from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.devkit.peers import SMALL_LIMITS, CloudLink, FakeBridge, FakeCloud, Reply, chunks_of
from cloudtolocalllm.protocol import PROTOCOL_VERSION, CloseCode, Data, End, Open, Ping, Pong, ResponseHead

TOKEN = "tok"
WINDOW = SMALL_LIMITS.initial_window


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    async with FakeCloud(tokens={TOKEN}) as fake:
        yield fake


async def digest(open_frame: Open, body: bytes) -> Reply:
    return Reply(chunks=chunks_of(hashlib.sha256(body).hexdigest().encode()))


async def test_a_stream_from_the_cloud_is_answered_by_the_bridge(cloud: FakeCloud) -> None:
    async with FakeBridge(cloud.url, TOKEN, bridge_id="b-7") as bridge:
        link = await cloud.next_link()
        assert link.authorization == f"Bearer {TOKEN}" and link.path == "/ws/bridge"
        assert link.hello.bridge_id == "b-7"
        assert bridge.welcome is not None and bridge.welcome.session_id == "s-1"
        stream = await link.open("GET", "/api/tags", query="x=1")
        head = await stream.head()
        assert isinstance(head, ResponseHead) and head.status == 200
        assert await stream.body() == b'{"path":"/api/tags"}'
        assert [(o.method, o.path, o.query) for o in bridge.opens] == [("GET", "/api/tags", "x=1")]


async def test_an_upload_larger_than_the_window_arrives_whole_within_credit(cloud: FakeCloud) -> None:
    blob = bytes(range(256)) * (4 * WINDOW // 256)
    async with FakeBridge(cloud.url, TOKEN, handler=digest) as bridge:
        link = await cloud.next_link()
        stream = await link.open("POST", "/api/blobs", body=blob)
        assert isinstance(await stream.head(), ResponseHead)
        assert await stream.body() == hashlib.sha256(blob).hexdigest().encode()
    assert 0 < bridge.max_unconsumed <= WINDOW


async def test_credit_held_back_stops_the_answer_at_the_window(cloud: FakeCloud) -> None:
    block = b"z" * 4096

    async def big(open_frame: Open, body: bytes) -> Reply:
        return Reply(chunks=chunks_of(*[block] * (4 * WINDOW // len(block))))

    async with FakeBridge(cloud.url, TOKEN, handler=big):
        link = await cloud.next_link()
        link.auto_credit = False
        stream = await link.open("GET", "/big")
        assert isinstance(await stream.head(), ResponseHead)
        received = 0
        while received < WINDOW:
            frame = await stream.next()
            assert isinstance(frame, Data)
            received += len(frame.payload)
        await asyncio.sleep(0.2)
        assert received == WINDOW and not stream.unread  # nothing beyond the credit
        link.auto_credit = True
        await link.grant(stream.sid, received)
        assert received + len(await stream.body()) == 4 * WINDOW


async def test_a_frame_that_arrived_is_unread_until_taken(cloud: FakeCloud) -> None:
    async with FakeBridge(cloud.url, TOKEN):
        link = await cloud.next_link()
        stream = await link.open("GET", "/api/version")
        await wait_until(lambda: stream.unread)
        assert isinstance(await stream.next(), ResponseHead)
        assert isinstance(await stream.next(), Data)
        assert isinstance(await stream.next(), End)
        assert not stream.unread


async def test_a_cancel_from_the_cloud_reaches_the_bridge(cloud: FakeCloud) -> None:
    never = asyncio.Event()

    async def hangs(open_frame: Open, body: bytes) -> Reply:
        await never.wait()
        return Reply()

    async with FakeBridge(cloud.url, TOKEN, handler=hangs) as bridge:
        link = await cloud.next_link()
        stream = await link.open("POST", "/api/chat", body=b"{}")
        await wait_until(lambda: bool(bridge.opens))
        await stream.cancel()
        await wait_until(lambda: stream.sid in bridge.cancelled)
        assert not stream.unread


@pytest.mark.parametrize("answers", [True, False])
async def test_a_silent_bridge_keeps_its_pongs_off_the_wire(cloud: FakeCloud, answers: bool) -> None:
    async with FakeBridge(cloud.url, TOKEN, answer_pings=answers):
        link = await cloud.next_link()
        await link.send(Ping(42))
        if answers:
            assert (await link.control_frame(Pong)).nonce == 42
        else:
            with pytest.raises(TimeoutError):
                await link.control_frame(Pong, timeout=0.5)


async def test_a_refused_token_fails_the_websocket_handshake(cloud: FakeCloud) -> None:
    with pytest.raises(InvalidStatus, match="401"):
        await FakeBridge(cloud.url, "wrong").connect()
    assert len(cloud.attempts) == 1


async def test_a_bridge_of_another_version_is_closed_with_the_upgrade_code(cloud: FakeCloud) -> None:
    bridge = FakeBridge(cloud.url, TOKEN, version=PROTOCOL_VERSION + 1)
    await bridge.connect()
    await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.VERSION_INCOMPATIBLE
    assert cloud.links == []


async def test_the_cloud_closing_is_seen_by_the_bridge(cloud: FakeCloud) -> None:
    async with FakeBridge(cloud.url, TOKEN) as bridge:
        link: CloudLink = await cloud.next_link()
        await link.close(CloseCode.UNAUTHORIZED, "token revoked")
        await asyncio.wait_for(bridge.closed.wait(), 5)
        await asyncio.wait_for(link.closed.wait(), 5)
    assert (bridge.close_code, bridge.close_reason) == (CloseCode.UNAUTHORIZED, "token revoked")
