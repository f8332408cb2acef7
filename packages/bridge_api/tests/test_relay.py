"""The relay over real sockets: routing, streaming, errors, cancellation, headers and bodies."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import pytest

from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.devkit.peers import FakeBridge, Reply, chunks_of
from cloudtolocalllm.protocol import ErrorCode, Open, StreamError

from .conftest import Cloud


def ndjson_reply(release: asyncio.Event) -> object:
    async def handler(open_frame: Open, body: bytes) -> Reply:
        async def chunks() -> object:
            yield b'{"message":{"content":"Hel"},"done":false}\n'
            await release.wait()
            yield b'{"message":{"content":"lo"},"done":false}\n'
            yield b'{"done":true}\n'

        return Reply(headers=[("content-type", "application/x-ndjson")], chunks=chunks())  # type: ignore[arg-type]

    return handler


async def test_no_bridge_is_503_ollama_shaped_with_retry_after(cloud: Cloud) -> None:
    async with cloud.client() as client:
        response = await client.post("/api/ollama/api/chat", json={"model": "smollm2:135m", "messages": []})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "no bridge is connected" in response.json()["error"]


async def test_unauthenticated_relay_is_401(cloud: Cloud) -> None:
    async with httpx.AsyncClient(base_url=cloud.url) as client:
        response = await client.get("/api/ollama/api/tags")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_ndjson_streams_chunk_by_chunk(cloud: Cloud) -> None:
    release = asyncio.Event()
    async with FakeBridge(cloud.url, cloud.token(), handler=ndjson_reply(release)), cloud.client() as client:  # type: ignore[arg-type]
        async with client.stream("POST", "/api/ollama/api/chat", json={"model": "smollm2:135m"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = response.aiter_lines()
            # The first token arrives while the bridge is still holding back the rest.
            first = await asyncio.wait_for(anext(lines), 5)
            assert first == '{"message":{"content":"Hel"},"done":false}'
            release.set()
            rest = [line async for line in lines]
    assert rest == ['{"message":{"content":"lo"},"done":false}', '{"done":true}']


async def test_request_reaches_bridge_without_credentials_and_with_query(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token()) as bridge, cloud.client() as client:
        response = await client.get(
            "/api/ollama/api/show?verbose=true",
            headers={"Cookie": "session=s3cret", "X-Custom": "kept", "Connection": "X-Drop", "X-Drop": "1"},
        )
    assert response.status_code == 200
    assert response.json() == {"path": "/api/show"}
    sent = bridge.opens[0]
    names = {name for name, _ in sent.headers}
    assert sent.query == "verbose=true"
    assert "authorization" not in names and "cookie" not in names and "host" not in names
    assert "x-drop" not in names and "connection" not in names
    assert ("x-custom", "kept") in sent.headers


async def test_response_reaches_the_client_without_hop_by_hop_or_origin_headers(cloud: Cloud) -> None:
    async def reply(open_frame: Open, body: bytes) -> Reply:
        headers = [("content-type", "application/json"), ("Connection", "X-Private"), ("X-Private", "1")]
        headers += [("Keep-Alive", "timeout=5"), ("Set-Cookie", "a=b"), ("X-Kept", "1")]
        return Reply(headers=headers, chunks=chunks_of(b"{}"))

    async with FakeBridge(cloud.url, cloud.token(), handler=reply), cloud.client() as client:
        response = await client.get("/api/ollama/api/version")
    assert response.status_code == 200 and response.headers["x-kept"] == "1"
    assert not {"x-private", "keep-alive", "set-cookie"} & set(response.headers.keys())


async def test_model_routing_and_404_for_unknown_model(cloud: Cloud) -> None:
    async with (
        FakeBridge(cloud.url, cloud.token(), bridge_id="a", models=["llama3:latest"]) as a,
        FakeBridge(cloud.url, cloud.token(), bridge_id="b", models=["smollm2:135m"]) as b,
        cloud.client() as client,
    ):
        ok = await client.post("/api/ollama/api/generate", json={"model": "llama3", "prompt": "x"})
        missing = await client.post("/api/ollama/api/generate", json={"model": "mistral", "prompt": "x"})
        assert ok.status_code == 200
        assert len(a.opens) == 1 and not b.opens
        assert missing.status_code == 404
        assert missing.json() == {"error": "model 'mistral' not found, try pulling it first"}


async def test_users_never_reach_each_others_bridges(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token("alice")) as alice_bridge, cloud.client("bob") as bob:
        relayed = await bob.get("/api/ollama/api/tags")
        status = await bob.get("/api/bridge/status")
        pinned = await bob.get("/api/ollama/api/version", headers={"X-CloudToLocalLLM-Bridge": "bridge-1"})
    assert relayed.status_code == 503
    assert status.json() == {"bridges": []}
    assert pinned.status_code == 503
    assert alice_bridge.opens == []


async def test_status_lists_the_callers_bridges(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token("alice"), models=["m:1"]), cloud.client("alice") as client:
        body = (await client.get("/api/bridge/status")).json()
    [bridge] = body["bridges"]
    assert bridge["id"] == "bridge-1"
    assert bridge["models"] == ["m:1"]
    assert bridge["backend_reachable"] is True
    assert bridge["streams_in_flight"] == 0
    assert bridge["connected_since"] <= time.time()


async def test_tags_merge_across_bridges(cloud: Cloud) -> None:
    async def tags_of(names: list[str]) -> object:
        async def handler(open_frame: Open, body: bytes) -> Reply:
            models = ",".join(f'{{"name":"{n}","size":1}}' for n in names)
            return Reply(chunks=chunks_of(f'{{"models":[{models}]}}'.encode()))

        return handler

    async with (
        FakeBridge(cloud.url, cloud.token(), bridge_id="a", handler=await tags_of(["x:1", "y:1"])),  # type: ignore[arg-type]
        FakeBridge(cloud.url, cloud.token(), bridge_id="b", handler=await tags_of(["y:1", "z:1"])),  # type: ignore[arg-type]
        cloud.client() as client,
    ):
        response = await client.get("/api/ollama/api/tags")
    assert [m["name"] for m in response.json()["models"]] == ["x:1", "y:1", "z:1"]


async def test_bridge_error_before_head_maps_to_status(cloud: Cloud) -> None:
    async def unreachable(open_frame: Open, body: bytes) -> StreamError:
        return StreamError(open_frame.stream_id, ErrorCode.BACKEND_UNREACHABLE, "is Ollama running?")

    async with FakeBridge(cloud.url, cloud.token(), handler=unreachable), cloud.client() as client:  # type: ignore[arg-type]
        response = await client.post("/api/ollama/api/chat", json={"model": "smollm2:135m"})
    assert response.status_code == 502
    assert response.json() == {"error": "is Ollama running?"}


async def test_bridge_killed_mid_stream_ends_ndjson_with_an_error_line(cloud: Cloud) -> None:
    release = asyncio.Event()
    bridge = FakeBridge(cloud.url, cloud.token(), handler=ndjson_reply(release))  # type: ignore[arg-type]
    await bridge.connect()
    async with cloud.client() as client:
        async with client.stream("POST", "/api/ollama/api/chat", json={"model": "smollm2:135m"}) as response:
            lines = response.aiter_lines()
            assert "Hel" in await anext(lines)
            killed_at = time.monotonic()
            await bridge.kill()
            rest = [line async for line in lines]
            elapsed = time.monotonic() - killed_at
    assert rest == ['{"error":"stream interrupted: bridge disconnected"}']
    assert elapsed < 1.0
    registry = cloud.app.state.registry
    await wait_until(lambda: not registry.all_sessions())


async def test_sse_stream_interrupted_gets_an_error_event(cloud: Cloud) -> None:
    release = asyncio.Event()

    async def sse(open_frame: Open, body: bytes) -> Reply:
        async def chunks() -> object:
            yield b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
            await release.wait()

        return Reply(headers=[("content-type", "text/event-stream")], chunks=chunks())  # type: ignore[arg-type]

    bridge = FakeBridge(cloud.url, cloud.token(), handler=sse)  # type: ignore[arg-type]
    await bridge.connect()
    async with cloud.client() as client:
        async with client.stream("POST", "/api/ollama/v1/chat/completions", json={"model": "smollm2:135m"}) as r:
            chunks = r.aiter_bytes()
            assert b"Hi" in await anext(chunks)
            await bridge.kill()
            tail = b"".join([c async for c in chunks])
    assert tail.startswith(b"event: error\ndata: {")


@pytest.mark.parametrize("learnt_from", ["server extension", "receive"])
async def test_client_disconnect_cancels_on_the_bridge_within_a_second(
    cloud: Cloud, learnt_from: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve()'s protocol tells of the loss with a future; under another server a task asks receive()."""
    if learnt_from == "receive":
        monkeypatch.setattr("cloudtolocalllm.bridge_api.exchange.connection_lost", lambda scope: None)
    release = asyncio.Event()
    async with FakeBridge(cloud.url, cloud.token(), handler=ndjson_reply(release)) as bridge:  # type: ignore[arg-type]
        async with cloud.client() as client:
            async with client.stream("POST", "/api/ollama/api/chat", json={"model": "smollm2:135m"}) as response:
                await anext(response.aiter_lines())
                stream_id = bridge.opens[0].stream_id
            closed_at = time.monotonic()  # leaving the block closes the connection mid-stream
        await wait_until(lambda: stream_id in bridge.cancelled, timeout=2)
        assert bridge.cancelled[stream_id] - closed_at < 1.0
        registry = cloud.app.state.registry
        assert registry.all_sessions()[0].in_flight == 0


async def test_large_upload_streams_under_credit(make_cloud: object) -> None:
    size = 12 * 1024 * 1024
    window = 256 * 1024

    async def digest(open_frame: Open, body: bytes) -> Reply:
        return Reply(chunks=chunks_of(hashlib.sha256(body).hexdigest().encode()))

    async def body() -> object:
        block = bytes(range(256)) * 256  # 64 KiB
        for _ in range(size // len(block)):
            yield block

    async with make_cloud(stream_window_bytes=window, max_frame_bytes=64 * 1024) as cloud:  # type: ignore[operator]
        async with FakeBridge(cloud.url, cloud.token(), handler=digest) as bridge, cloud.client() as client:  # type: ignore[arg-type]
            response = await client.post(
                "/api/ollama/api/blobs/sha256:" + "0" * 64,
                content=body(),  # type: ignore[arg-type]
                timeout=60,
            )
    expected = hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).hexdigest()
    assert response.status_code == 200
    assert response.text == expected
    assert bridge.opens[0].has_body
    assert bridge.max_unconsumed <= window


async def test_json_body_over_the_limit_is_413(make_cloud: object) -> None:
    async with make_cloud(max_json_body_bytes=4096) as cloud:  # type: ignore[operator]
        async with FakeBridge(cloud.url, cloud.token()), cloud.client() as client:
            response = await client.post("/api/ollama/api/chat", content=b"x" * 10_000)
    assert response.status_code == 413
    assert "larger than 4096 bytes" in response.json()["error"]


async def test_per_bridge_stream_limit_is_429_with_retry_after(make_cloud: object) -> None:
    release = asyncio.Event()
    async with make_cloud(max_streams_per_bridge=1) as cloud:  # type: ignore[operator]
        async with FakeBridge(cloud.url, cloud.token(), handler=ndjson_reply(release)), cloud.client() as client:  # type: ignore[arg-type]
            async with client.stream("POST", "/api/ollama/api/chat", json={"model": "smollm2:135m"}) as first:
                await anext(first.aiter_lines())
                second = await client.post("/api/ollama/api/chat", json={"model": "smollm2:135m"})
                release.set()
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"


async def test_backend_unreachable_reported_by_bridge_is_503(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token()) as bridge, cloud.client() as client:
        await bridge.report(reachable=False, models=[])
        await wait_until(lambda: not cloud.app.state.registry.all_sessions()[0].backend_reachable)
        response = await client.get("/api/ollama/api/version")
    assert response.status_code == 503
    assert "cannot reach its local LLM server" in response.json()["error"]


async def test_first_byte_timeout_is_504_and_cancels(make_cloud: object) -> None:
    never = asyncio.Event()

    async def silent(open_frame: Open, body: bytes) -> Reply:
        await never.wait()
        return Reply()

    async with make_cloud(first_byte_timeout_s=0.3) as cloud:  # type: ignore[operator]
        async with FakeBridge(cloud.url, cloud.token(), handler=silent) as bridge, cloud.client() as client:  # type: ignore[arg-type]
            response = await client.get("/api/ollama/api/version")
            await wait_until(lambda: bool(bridge.cancelled))
    assert response.status_code == 504
    assert "sent nothing within 0.3 s" in response.json()["error"]


@pytest.mark.parametrize("path", ["/api/ollama/api/tags", "/api/bridge/status"])
async def test_expired_token_is_401_on_every_route(cloud: Cloud, path: str) -> None:
    token = cloud.token(extra_claims={"exp": int(time.time()) - 3600})
    async with httpx.AsyncClient(base_url=cloud.url, headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.get(path)
    assert response.status_code == 401
    assert response.json() == {"error": "token expired"}


async def test_model_management_is_forwarded_even_when_the_model_is_unlisted(cloud: Cloud) -> None:
    # The bridge's model list can lag a local `ollama pull`; the backend decides for management calls.
    async with FakeBridge(cloud.url, cloud.token(), models=[]) as bridge, cloud.client() as client:
        deleted = await client.request("DELETE", "/api/ollama/api/delete", json={"model": "fresh:latest"})
        chat = await client.post("/api/ollama/api/chat", json={"model": "fresh:latest"})
    assert deleted.status_code == 200
    assert [o.path for o in bridge.opens] == ["/api/delete"]
    assert chat.status_code == 404


@pytest.mark.parametrize(("round_trip_s", "grows"), [(5.0, True), (1e-9, False)])
async def test_a_response_window_grows_only_when_the_round_trip_holds_it_back(
    make_cloud: object, round_trip_s: float, grows: bool
) -> None:
    block = b"y" * (16 * 1024)

    async def big(open_frame: Open, body: bytes) -> Reply:
        return Reply(chunks=chunks_of(*[block] * 256))  # 4 MiB

    settings = {"stream_window_bytes": 64 * 1024, "max_stream_window_bytes": 512 * 1024}
    async with make_cloud(**settings) as cloud:  # type: ignore[operator]
        async with FakeBridge(cloud.url, cloud.token(), handler=big), cloud.client() as client:  # type: ignore[arg-type]
            session = cloud.app.state.registry.all_sessions()[0]
            await wait_until(lambda: session.conn.rtt_s > 0)  # the Pong to the Ping sent after the Welcome
            # A long round trip makes every half window arrive "fast" (the sender waited for credit); a
            # round trip shorter than any consumption never does.
            session.conn.rtt_s = round_trip_s
            windows = [0]
            received = 0
            async with client.stream("GET", "/api/ollama/api/big") as response:
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    windows += [session.conn.recv_window(sid) for sid in session.conn.stream_ids]
    assert received == 256 * len(block)
    assert max(windows) == (512 * 1024 if grows else 64 * 1024)
