"""A contract double of Ollama's native API, built from real Ollama response shapes, for what a small
llama.cpp model cannot show: pull progress, blobs, create/copy/delete, and observable cancellation.

It runs on uvicorn in a background thread so the (synchronous) official clients can call it through
the tunnel; ``events`` records what the backend saw, with monotonic timestamps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cloudtolocalllm.core.testing import running_server

MODEL = "llama3.2:1b"
TAG = {
    "name": MODEL,
    "model": MODEL,
    "modified_at": "2026-10-01T12:00:00.000000000Z",
    "size": 1321098329,
    "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
    "details": {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2B",
        "quantization_level": "Q8_0",
    },
}


class FakeOllama:
    def __init__(self, chat_chunks: list[bytes] | None = None, chunk_gap_s: float = 0.15) -> None:
        # chat_chunks: raw bytes /api/chat sends instead of its counting answer, one write each, chunk_gap_s
        # apart, so a test controls the network chunk boundaries (a split UTF-8 character, hostile markup).
        self.chat_chunks = chat_chunks
        self.chunk_gap_s = chunk_gap_s
        self.events: list[tuple[str, float, Any]] = []
        self.blobs: dict[str, int] = {}
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def event_times(self, kind: str) -> list[float]:
        return [t for k, t, _ in list(self.events) if k == kind]

    # --- endpoints ---------------------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "0.6.2"})

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": [TAG]})

    async def pull(self, request: Request) -> Response:
        body = await request.json()
        self.events.append(("pull", time.monotonic(), body.get("model")))

        async def progress() -> AsyncIterator[bytes]:
            yield b'{"status":"pulling manifest"}\n'
            total = 4000
            for completed in range(0, total + 1, 1000):
                line = {
                    "status": "pulling baf6a787fdff",
                    "digest": "sha256:baf6",
                    "total": total,
                    "completed": completed,
                }
                yield json.dumps(line).encode() + b"\n"
                await asyncio.sleep(0.01)
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                yield json.dumps({"status": status}).encode() + b"\n"

        return StreamingResponse(progress(), media_type="application/x-ndjson")

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        options = body.get("options", {})
        chunks = int(options.get("num_predict", 200))
        delay = float(options.get("delay_ms", 50)) / 1000  # 0: produce as fast as the reader allows
        self.events.append(("chat-start", time.monotonic(), chunks))
        if self.chat_chunks is not None:
            return StreamingResponse(self._scripted(self.chat_chunks), media_type="application/x-ndjson")

        async def tokens() -> AsyncIterator[bytes]:
            try:
                for i in range(chunks):
                    line = {
                        "model": MODEL,
                        "created_at": "2026-11-26T00:00:00Z",
                        "message": {"role": "assistant", "content": f"t{i} "},
                        "done": False,
                    }
                    yield json.dumps(line).encode() + b"\n"
                    await asyncio.sleep(delay)
                done = {
                    "model": MODEL,
                    "created_at": "2026-11-26T00:00:00Z",
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "eval_count": chunks,
                }
                yield json.dumps(done).encode() + b"\n"
                self.events.append(("chat-done", time.monotonic(), None))
            finally:
                # Reached when the client (the bridge) closes the connection: generation stops here.
                self.events.append(("chat-closed", time.monotonic(), None))

        return StreamingResponse(tokens(), media_type="application/x-ndjson")

    async def _scripted(self, chunks: list[bytes]) -> AsyncIterator[bytes]:
        try:
            for i, chunk in enumerate(chunks):
                if i:
                    await asyncio.sleep(self.chunk_gap_s)
                yield chunk
            self.events.append(("chat-done", time.monotonic(), None))
        finally:
            self.events.append(("chat-closed", time.monotonic(), None))

    async def blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        if request.method == "HEAD":
            return Response(status_code=200 if digest in self.blobs else 404)
        hasher = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            hasher.update(chunk)
            size += len(chunk)
        if f"sha256:{hasher.hexdigest()}" != digest:
            return JSONResponse({"error": "digest mismatch"}, status_code=400)
        self.blobs[digest] = size
        self.events.append(("blob", time.monotonic(), size))
        return Response(status_code=201)

    async def create(self, request: Request) -> Response:
        body = await request.json()
        self.events.append(("create", time.monotonic(), body))
        if body.get("stream") is False:  # like Ollama: one final object instead of the progress stream
            return JSONResponse({"status": "success"})
        lines = [{"status": "using existing layer sha256:x"}, {"status": "writing manifest"}, {"status": "success"}]
        return Response("".join(json.dumps(x) + "\n" for x in lines), media_type="application/x-ndjson")

    async def copy(self, request: Request) -> Response:
        self.events.append(("copy", time.monotonic(), await request.json()))
        return Response(status_code=200)

    async def delete(self, request: Request) -> Response:
        self.events.append(("delete", time.monotonic(), await request.json()))
        return Response(status_code=200)

    # --- lifecycle ---------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/version", self.version),
                Route("/api/tags", self.tags),
                Route("/api/pull", self.pull, methods=["POST"]),
                Route("/api/chat", self.chat, methods=["POST"]),
                Route("/api/blobs/{digest}", self.blob, methods=["HEAD", "POST"]),
                Route("/api/create", self.create, methods=["POST"]),
                Route("/api/copy", self.copy, methods=["POST"]),
                Route("/api/delete", self.delete, methods=["DELETE"]),
            ]
        )

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_server(self.app()) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("fake Ollama did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
