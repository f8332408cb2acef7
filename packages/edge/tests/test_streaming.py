"""Streams pass the edge unbuffered in both directions, and WebSockets upgrade through /ws/."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import websockets.exceptions
from websockets.sync.client import connect

from .edge_harness import Edge, UpstreamServers, released

FIRST_CHUNK_TIMEOUT_S = 5.0


@pytest.mark.parametrize(
    ("path", "first", "media_type"),
    [
        ("/api/stream/ndjson", b'{"message":{"content":"0"},"done":false}\n', "application/x-ndjson"),
        ("/api/stream/sse", b"data: first\n\n", "text/event-stream"),
    ],
)
def test_streamed_answers_reach_the_client_while_the_upstream_holds_the_rest(
    edge: Edge, upstreams: UpstreamServers, path: str, first: bytes, media_type: str
) -> None:
    key = uuid.uuid4().hex
    gate = upstreams.shared.gate(key)
    client = edge.client(timeout=httpx.Timeout(10, read=FIRST_CHUNK_TIMEOUT_S))
    headers = {"Host": "app.localhost", "Accept-Encoding": "gzip"}
    with released(gate), client.stream("GET", edge.url(f"{path}?gate={key}"), headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert "content-encoding" not in response.headers  # compressing would hold bytes back
        chunks = response.iter_raw()
        received = next(chunks)
        while len(received) < len(first):
            received += next(chunks)
        # The upstream is still parked on the gate: nginx forwarded the first chunk without waiting.
        assert received == first
        assert not gate.finished.is_set()
        gate.release.set()
        rest = b"".join(chunks)
    assert gate.finished.wait(5)
    assert rest.endswith(b'{"done":true}\n' if "ndjson" in path else b"data: [DONE]\n\n")


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_request_bodies_reach_the_upstream_before_the_client_finished_sending(
    edge: Edge, upstreams: UpstreamServers, framing: str
) -> None:
    key = uuid.uuid4().hex
    gate = upstreams.shared.gate(key)
    part = b"x" * 64 * 1024

    def body() -> Iterator[bytes]:
        yield part
        # With request buffering on, nginx would wait for the whole body before contacting the upstream.
        assert gate.first_bytes.wait(FIRST_CHUNK_TIMEOUT_S), "the upstream saw no byte before the body ended"
        yield part

    headers = {"Host": "app.localhost"}
    if framing == "content-length":
        headers["Content-Length"] = str(2 * len(part))
    response = edge.client().post(edge.url(f"/api/upload?gate={key}"), content=body(), headers=headers)
    assert response.status_code == 200
    assert response.json()["received"] == 2 * len(part)


def test_model_sized_uploads_are_not_capped_on_the_api(edge: Edge, upstreams: UpstreamServers) -> None:
    # nginx's default client_max_body_size (1m) would answer 413 to an Ollama blob upload.
    key = uuid.uuid4().hex
    size = 8 * 1024 * 1024
    response = edge.request("POST", "app.localhost", f"/api/upload?gate={key}", content=b"\0" * size)
    assert response.status_code == 200
    assert response.json()["received"] == size


def test_site_routes_keep_a_body_limit_with_a_clear_413(edge: Edge) -> None:
    response = edge.request("POST", "app.localhost", "/form", content=b"\0" * (2 * 1024 * 1024))
    assert response.status_code == 413


def _ws_connect(edge: Edge, timeout: float = 5.0) -> object:
    sock = socket.create_connection(("127.0.0.1", edge.https_port), timeout=timeout)
    return connect(
        f"wss://app.localhost:{edge.https_port}/ws/bridge",
        sock=sock,
        ssl=edge.ssl_context(),
        additional_headers={"X-Request-ID": "ws-test-1"},
        open_timeout=timeout,
    )


def test_websocket_upgrade_round_trip_through_ws(edge: Edge) -> None:
    with _ws_connect(edge) as ws:  # type: ignore[attr-defined]
        assert ws.recv(timeout=5).startswith("hello from api-backend#")
        ws.send("ping")
        assert ws.recv(timeout=5) == "echo:ping"
        assert ws.response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert '"config"' in edge.get("app.localhost", "/health").text  # nginx still healthy afterwards


def test_an_idle_websocket_outlives_a_short_configured_timeout_only_when_configured_long(
    make_edge: object,
) -> None:
    # The knob is wired to the /ws/ location: with read = 1 s nginx cuts an idle tunnel; the default
    # (3600 s, asserted in test_render) keeps the same idle tunnel open.
    short = make_edge(  # type: ignore[operator]
        {
            "sites": [
                {
                    "name": "app",
                    "hosts": ["app.localhost"],
                    "routes": [
                        {
                            "path": "/ws/",
                            "upstream": "api-backend",
                            "websocket": True,
                            "timeouts": {"read": 1},
                        },
                    ],
                }
            ]
        }
    )
    default = make_edge()  # type: ignore[operator]
    with _ws_connect(short) as cut, _ws_connect(default) as kept:  # type: ignore[attr-defined]
        cut.recv(timeout=5)
        kept.recv(timeout=5)
        time.sleep(2.5)  # idle on purpose: the thing under test is what an idle period does
        kept.send("still there?")
        assert kept.recv(timeout=5) == "echo:still there?"
        # nginx already closed the idle upstream and client connections: nothing more will arrive.
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            cut.recv(timeout=5)
