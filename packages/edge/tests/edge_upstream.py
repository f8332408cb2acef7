"""A stand-in for the edge's upstreams (static-site, flutter-app, api-backend), served by uvicorn.

Every response says which instance answered and the raw path it received. Streaming endpoints hold the rest
of their answer until the test releases a gate, so a test can prove the client saw the first chunk while the
upstream was still holding the rest.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

GATE_TIMEOUT_S = 20.0


@dataclass
class Gate:
    """Cross-thread signals for one streaming exchange between a test and an upstream handler."""

    release: threading.Event = field(default_factory=threading.Event)
    first_bytes: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    received: int = 0


@dataclass
class Shared:
    gates: dict[str, Gate] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # /site/ requests as received, by path: what the edge cache let through to the origin.
    hits: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)  # /site/ paths answered with 500

    def gate(self, key: str) -> Gate:
        with self.lock:
            return self.gates.setdefault(key, Gate())

    def seen(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return list(self.hits.get(path, []))


IMMUTABLE = "public, max-age=31536000, immutable"
_HASHED = re.compile(r"[.-][0-9a-f]{8,}\.[a-z0-9]+$")


def site_body(path: str) -> bytes:
    """The deterministic body the /site/ origin sends for ``path`` (large for .bin downloads)."""
    if path.endswith(".bin"):
        return bytes(range(256)) * 1024  # 256 KiB, every offset distinguishable modulo 256
    return f"static content of {path}\n".encode() * 40


def build_app(name: str, shared: Shared) -> Starlette:
    healthy = {"ok": True}

    async def echo(request: Request) -> Response:
        raw_path = request.scope["raw_path"].decode("latin-1")
        body = await request.body()
        return JSONResponse(
            {
                "upstream": name,
                "method": request.method,
                "path": raw_path,
                "query": request.scope["query_string"].decode("latin-1"),
                "headers": dict(request.headers.items()),
                "body_bytes": len(body),
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok" if healthy["ok"] else "down"}, status_code=200 if healthy["ok"] else 503)

    async def set_health(request: Request) -> Response:
        healthy["ok"] = request.query_params["ok"] == "1"
        return PlainTextResponse("ok")

    async def gated_stream(request: Request, first: bytes, rest: list[bytes], media_type: str) -> Response:
        gate = shared.gate(request.query_params["gate"])

        async def body() -> AsyncIterator[bytes]:
            yield first
            released = await asyncio.to_thread(gate.release.wait, GATE_TIMEOUT_S)
            if released:
                for chunk in rest:
                    yield chunk
            gate.finished.set()

        return StreamingResponse(body(), media_type=media_type, headers={"Cache-Control": "no-cache"})

    async def ndjson(request: Request) -> Response:
        lines = [b'{"message":{"content":"%d"},"done":false}\n' % i for i in range(1, 4)]
        return await gated_stream(
            request,
            b'{"message":{"content":"0"},"done":false}\n',
            [*lines, b'{"done":true}\n'],
            "application/x-ndjson",
        )

    async def sse(request: Request) -> Response:
        return await gated_stream(
            request, b"data: first\n\n", [b"data: second\n\n", b"data: [DONE]\n\n"], "text/event-stream"
        )

    async def upload(request: Request) -> Response:
        gate = shared.gate(request.query_params["gate"])
        async for chunk in request.stream():
            if chunk:
                gate.received += len(chunk)
                gate.first_bytes.set()
        gate.finished.set()
        return JSONResponse({"upstream": name, "received": gate.received})

    async def big(request: Request) -> Response:
        return JSONResponse({"upstream": name, "items": [{"id": i, "text": "lorem ipsum dolor"} for i in range(500)]})

    async def big_ndjson(request: Request) -> Response:
        return Response(b'{"x":"lorem ipsum dolor sit amet"}\n' * 200, media_type="application/x-ndjson")

    async def own_error(request: Request) -> Response:
        return JSONResponse({"error": "no bridge connected"}, status_code=503)

    async def with_headers(request: Request) -> Response:
        return PlainTextResponse(
            "upstream headers", headers={"X-Frame-Options": "DENY", "Cache-Control": "private, max-age=5"}
        )

    async def cached(request: Request) -> Response:
        status = int(request.query_params.get("status", "200"))
        return PlainTextResponse(f"{name} asset", status_code=status, headers={"Cache-Control": "max-age=60"})

    async def site(request: Request) -> Response:
        """A static origin like static-site: ETags, 304s, Cache-Control by name, gzip variants on request.

        Query parameters (not part of the cache key: each test uses its own paths): ``cc`` replaces
        Cache-Control (``none`` omits it), ``cookie=1`` adds Set-Cookie, ``enc=1`` negotiates gzip with
        ``Vary: Accept-Encoding``.
        """
        path = request.url.path
        query = request.query_params
        status = 500 if path in shared.failing else 200
        with shared.lock:
            shared.hits.setdefault(path, []).append(
                {
                    "if-none-match": request.headers.get("if-none-match", ""),
                    "range": request.headers.get("range", ""),
                    "accept-encoding": request.headers.get("accept-encoding", ""),
                    "authorization": request.headers.get("authorization", ""),
                    "status": str(status),
                    "query": request.scope["query_string"].decode("latin-1"),
                }
            )
        if path.endswith((".html", "/")):
            cache_control = "no-cache"
        elif _HASHED.search(path):
            cache_control = IMMUTABLE
        else:
            cache_control = "public, max-age=60"
        cache_control = query.get("cc", cache_control)
        body, etag = site_body(path), '"v1"'
        headers = {"ETag": etag, "X-Frame-Options": "DENY"}
        if cache_control != "none":
            headers["Cache-Control"] = cache_control
        if query.get("cookie") == "1":
            headers["Set-Cookie"] = "session=s3cr3t; Path=/; HttpOnly"
        if query.get("enc") == "1":
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in request.headers.get("accept-encoding", ""):
                body, headers["ETag"] = gzip.compress(body), '"v1-gzip"'
                headers["Content-Encoding"] = "gzip"
        if status != 200:
            return PlainTextResponse("origin error", status_code=status, headers=headers)
        if request.headers.get("if-none-match") == headers["ETag"]:
            with shared.lock:
                shared.hits[path][-1]["status"] = "304"
            return Response(status_code=304, headers=headers)
        media_type = "text/html" if path.endswith((".html", "/")) else "application/octet-stream"
        return Response(body, media_type=media_type, headers=headers)

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(f"hello from {name}")
        try:
            while True:
                message = await websocket.receive_text()
                await websocket.send_text(f"echo:{message}")
        except Exception:
            return

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/_test/health", set_health),
            Route("/api/stream/ndjson", ndjson, methods=["GET", "POST"]),
            Route("/api/stream/sse", sse),
            Route("/api/upload", upload, methods=["POST", "PUT"]),
            Route("/api/big", big),
            Route("/api/big-ndjson", big_ndjson),
            Route("/api/own-error", own_error),
            Route("/upstream-headers", with_headers),
            Route("/cached/{rest:path}", cached),
            Route("/site/{rest:path}", site, methods=["GET", "HEAD"]),
            Route("/api/site/{rest:path}", site, methods=["GET", "HEAD"]),
            WebSocketRoute("/ws/bridge", ws_echo),
            Route("/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
        ]
    )
