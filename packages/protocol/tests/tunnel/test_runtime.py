"""The tunnel runtime over a real loopback WebSocket: handshake, streams under credit, dispatch, heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from cloudtolocalllm.protocol import (
    BATCH,
    PROTOCOL_VERSION,
    BackendKind,
    Cancel,
    CloseCode,
    Connection,
    End,
    ErrorCode,
    Frame,
    Hello,
    Limits,
    Open,
    ResponseHead,
    Role,
    Welcome,
    agreed_features,
)
from cloudtolocalllm.protocol.tunnel import (
    HandshakeFailed,
    Heartbeat,
    StreamFailed,
    Tunnel,
    TunnelStream,
    accept_hello,
    greet,
    send_welcome,
)
from cloudtolocalllm.protocol.tunnel.websockets_transport import WebsocketsTransport

from .waiting import wait_until

LIMITS = Limits(max_frame_bytes=16 * 1024, initial_window=32 * 1024, max_concurrent_streams=8)


def _hello(version: int = PROTOCOL_VERSION, features: tuple[str, ...] = ()) -> Hello:
    return Hello(version, "bridge-1", "test", "0.1.0", "linux", BackendKind.OLLAMA, True, [], list(features))


def _welcome(hello: Hello | None = None) -> Welcome:
    features = agreed_features(hello.features) if hello is not None else []
    return Welcome(PROTOCOL_VERSION, "session-1", 20.0, LIMITS, token_expires_at=1_900_000_000.0, features=features)


class CountingTransport(WebsocketsTransport):
    """Counts the WebSocket messages it receives."""

    received = 0

    async def receive(self) -> bytes | str:
        message = await super().receive()
        self.received += 1
        return message


@dataclass
class Ends:
    cloud: Tunnel
    bridge: Tunnel
    bridge_frames: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    cloud_frames: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    cloud_transport: CountingTransport | None = None


@asynccontextmanager
async def tunnel_pair(
    cloud_heartbeat: Heartbeat | None = None,
    bridge_heartbeat: Heartbeat | None = None,
    features: tuple[str, ...] = (),
) -> AsyncIterator[Ends]:
    """A cloud (websockets server) and a bridge (client) on loopback, shaken hands, both runtimes running;
    ``features``: what the bridge's Hello offers (the cloud turns on those it knows)."""
    cloud_ready: asyncio.Future[Tunnel] = asyncio.get_running_loop().create_future()
    cloud_frames: asyncio.Queue[Frame] = asyncio.Queue()
    bridge_frames: asyncio.Queue[Frame] = asyncio.Queue()

    cloud_transport: list[CountingTransport] = []

    async def handler(ws: ServerConnection) -> None:
        transport = CountingTransport(ws)
        cloud_transport.append(transport)
        conn = Connection(Role.CLOUD)
        hello = await accept_hello(transport, conn, timeout_s=5)
        await send_welcome(transport, conn, _welcome(hello))
        tunnel = Tunnel(
            transport, conn, heartbeat=cloud_heartbeat or Heartbeat(dead_after_s=60), on_frame=cloud_frames.put_nowait
        )
        cloud_ready.set_result(tunnel)
        await tunnel.run()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws:
            transport = WebsocketsTransport(ws)
            conn = Connection(Role.BRIDGE)
            assert isinstance(await greet(transport, conn, _hello(features=features), timeout_s=5), Welcome)
            accepted: dict[int, TunnelStream] = {}

            def on_bridge_frame(frame: Frame) -> None:
                if isinstance(frame, Open):  # taken at once, as the real bridge does: its Data may follow
                    accepted[frame.stream_id] = bridge.accept_stream(frame.stream_id)
                bridge_frames.put_nowait(frame)

            bridge = Tunnel(
                transport,
                conn,
                heartbeat=bridge_heartbeat or Heartbeat(dead_after_s=60, ping_back=True),
                on_frame=on_bridge_frame,
            )
            reader = asyncio.create_task(bridge.run())
            ends = Ends(await cloud_ready, bridge, bridge_frames, cloud_frames, cloud_transport[0])
            try:
                yield ends
            finally:
                await bridge.close()
                await asyncio.gather(reader, return_exceptions=True)


async def _accept(ends: Ends) -> tuple[Open, TunnelStream]:
    frame = await asyncio.wait_for(ends.bridge_frames.get(), 5)
    assert isinstance(frame, Open)
    return frame, ends.bridge.streams[frame.stream_id]


async def _read_all(stream: TunnelStream, coalesce: int = 0) -> bytes:
    body = bytearray()
    while (chunk := await asyncio.wait_for(stream.read(coalesce), 5)) is not None:
        body += chunk
        stream.consumed(len(chunk))
    return bytes(body)


@pytest.mark.parametrize("features", [(), (BATCH,)], ids=["one-frame-messages", "batches"])
async def test_a_body_many_windows_long_crosses_both_ways_under_credit(features: tuple[str, ...]) -> None:
    upload = bytes(range(256)) * 1024  # 256 KiB: eight windows, sixteen frames at least
    async with tunnel_pair(features=features) as ends:
        assert ends.cloud.conn.features == ends.bridge.conn.features == frozenset(features)
        stream = ends.cloud.open_stream("POST", "/api/chat", "", [], True)
        sending = asyncio.create_task(_send(stream, upload))
        frame, served = await _accept(ends)
        assert frame.path == "/api/chat"
        assert await _read_all(served) == upload
        await sending
        await served.send(ResponseHead(frame.stream_id, 200, [("content-type", "text/plain")]))
        answering = asyncio.create_task(_send(served, upload[::-1]))  # waits for the cloud's credit
        head = await asyncio.wait_for(stream.head, 5)
        assert head.status == 200
        assert await _read_all(stream, coalesce=64 * 1024) == upload[::-1]
        await answering
        assert served.bytes_in == len(upload) == stream.bytes_in
        assert ends.cloud.conn.buffered_bytes == 0 == ends.bridge.conn.buffered_bytes


async def test_with_batches_a_short_answer_crosses_in_one_message() -> None:
    for features, messages in (((), 3), ((BATCH,), 1)):
        async with tunnel_pair(features=features) as ends:
            assert ends.cloud_transport is not None
            stream = ends.cloud.open_stream("POST", "/api/chat", "", [], False)
            frame, served = await _accept(ends)
            before = ends.cloud_transport.received
            # Queued in one go, as the bridge does with a short answer it already holds.
            await served.send(ResponseHead(frame.stream_id, 200, [("content-type", "application/x-ndjson")]))
            await served.send_body(b'{"done":true}\n')
            await served.end_body()
            assert (await asyncio.wait_for(stream.head, 5)).status == 200
            assert await _read_all(stream) == b'{"done":true}\n'
            assert ends.cloud_transport.received - before == messages, features


async def _send(stream: TunnelStream, body: bytes) -> None:
    await stream.send_body(body)
    await stream.end_body()


async def test_data_for_a_released_stream_returns_its_credit_once() -> None:
    async with tunnel_pair() as ends:
        stream = ends.cloud.open_stream("POST", "/api/pull", "", [], True)
        _, served = await _accept(ends)
        ends.bridge.release(served)  # the bridge is done with it, the cloud still uploads
        await asyncio.wait_for(_send(stream, b"x" * (4 * LIMITS.initial_window)), 5)
        # Four windows went through although nobody read them: each was credited back as it arrived.
        assert ends.bridge.conn.buffered_bytes == 0


async def test_a_cancel_fails_the_peers_stream_and_reaches_the_application() -> None:
    async with tunnel_pair() as ends:
        stream = ends.cloud.open_stream("GET", "/api/tags", "", [], False)
        _, served = await _accept(ends)
        stream.reset(Cancel(stream.stream_id, "client disconnected"))
        with pytest.raises(StreamFailed) as failed:
            await asyncio.wait_for(served.read(), 5)
        assert failed.value.code is ErrorCode.CANCELLED
        assert await asyncio.wait_for(ends.bridge_frames.get(), 5) == Cancel(stream.stream_id, "client disconnected")
        assert stream.stream_id not in ends.cloud.streams


async def test_a_stream_rule_broken_by_the_peer_is_answered_and_fails_only_that_stream() -> None:
    async with tunnel_pair() as ends:
        stream = ends.cloud.open_stream("GET", "/api/tags", "", [], False)
        frame, served = await _accept(ends)
        # Data before the ResponseHead breaks a rule; the frame is forged past the bridge's own checks.
        ends.bridge._writer.put_control(_raw_data(frame.stream_id))
        with pytest.raises(StreamFailed) as failed:
            await asyncio.wait_for(stream.head, 5)
        assert failed.value.code is ErrorCode.PROTOCOL
        reply = await asyncio.wait_for(ends.bridge_frames.get(), 5)
        assert reply.stream_id == frame.stream_id and reply.error_code is ErrorCode.PROTOCOL  # type: ignore[union-attr]
        assert ends.cloud.is_open and ends.bridge.is_open  # the connection lives on
        other = ends.cloud.open_stream("GET", "/api/tags", "", [], False)
        _, served = await _accept(ends)
        await served.send(ResponseHead(other.stream_id, 204, []))
        await served.send(End(other.stream_id))
        assert (await asyncio.wait_for(other.head, 5)).status == 204


def _raw_data(stream_id: int) -> bytes:
    from cloudtolocalllm.protocol import Data, encode

    return encode(Data(stream_id, b"early"))


async def test_pings_are_answered_and_the_bridge_pings_back_to_time_the_round_trip() -> None:
    async with tunnel_pair(cloud_heartbeat=Heartbeat(dead_after_s=60, interval_s=0.05)) as ends:
        before = ends.cloud.last_pong
        await wait_until(lambda: ends.cloud.last_pong > before and ends.bridge.conn.rtt_s > 0)
        assert ends.cloud.conn.rtt_s > 0


async def test_silence_ends_the_connection_through_on_silence() -> None:
    silences: list[float] = []
    async with tunnel_pair() as ends:
        tunnel = Tunnel(
            ends.bridge.transport,
            Connection(Role.BRIDGE),
            heartbeat=Heartbeat(dead_after_s=0.1),
            on_silence=silences.append,
        )
        tunnel._arm_heartbeat()
        await wait_until(lambda: bool(silences))
        assert silences[0] >= 0.1
        await tunnel.aclose()


async def test_handshake_timeout_and_version_mismatch_say_how_to_close() -> None:
    outcomes: asyncio.Queue[HandshakeFailed] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        try:
            await accept_hello(WebsocketsTransport(ws), Connection(Role.CLOUD), timeout_s=0.1)
        except HandshakeFailed as exc:
            outcomes.put_nowait(exc)

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None):
            silent = await asyncio.wait_for(outcomes.get(), 5)
        assert silent.close_code == CloseCode.PROTOCOL_VIOLATION
        assert "no Hello" in silent.reason
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws:
            from cloudtolocalllm.protocol import encode

            await ws.send(encode(_hello(version=PROTOCOL_VERSION + 1000)))
            newer = await asyncio.wait_for(outcomes.get(), 5)
        assert newer.close_code == CloseCode.VERSION_INCOMPATIBLE
