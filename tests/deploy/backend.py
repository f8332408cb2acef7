"""A local "Ollama" for the bridge: /api/chat streams a fixed number of NDJSON lines, a little apart, so that a
stream is in flight for a while (what a switch of api-backend instances may cut)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cloudtolocalllm.core.testing import running_server

MODEL = "deploy-test:latest"
TOKENS = 8
GAP_S = 0.05


async def _version(request: Request) -> Response:
    return JSONResponse({"version": "0.5.0"})


async def _tags(request: Request) -> Response:
    return JSONResponse({"models": [{"name": MODEL, "model": MODEL, "size": 1, "digest": "0" * 64}]})


async def _chat(request: Request) -> Response:
    await request.body()

    async def lines() -> AsyncIterator[bytes]:
        for i in range(TOKENS):
            await asyncio.sleep(GAP_S)
            message = {"role": "assistant", "content": f"t{i} "}
            yield json.dumps({"model": MODEL, "message": message, "done": False}).encode() + b"\n"
        yield json.dumps({"model": MODEL, "message": {"role": "assistant", "content": ""}, "done": True}).encode()
        yield b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def app() -> Starlette:
    return Starlette(
        routes=[
            Route("/api/version", _version),
            Route("/api/tags", _tags),
            Route("/api/chat", _chat, methods=["POST"]),
        ]
    )


class Backend:
    """The app on a loopback port, in a thread with its own loop."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_server(app()) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Backend:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the backend did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
