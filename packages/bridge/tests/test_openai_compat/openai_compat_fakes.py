"""Helpers to call the translator, directly and through an ASGI stand-in for the cloud; the OpenAI-compatible
server they call is the devkit's Ollama double in its OpenAI mode (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cloudtolocalllm.bridge.backend import BackendError, BackendResponse, HttpBackend
from cloudtolocalllm.bridge.openai_compat import translate
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.devkit.ollama import asgi
from cloudtolocalllm.protocol import ErrorCode

# --- calling the translator --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        assert self.body.endswith(b"\n"), self.body
        return [json.loads(line) for line in self.body.split(b"\n")[:-1]]


async def _body(payload: bytes) -> AsyncIterator[bytes]:
    # In two pieces, as the tunnel may deliver it.
    yield payload[: len(payload) // 2]
    yield payload[len(payload) // 2 :]


async def start(
    upstream: HttpBackend, method: str, path: str, document: Any = None, *, raw: bytes | None = None
) -> BackendResponse:
    payload = raw if raw is not None else None if document is None else json.dumps(document).encode()
    headers = [("content-type", "application/json")]
    return await translate(upstream, method, path, "", headers, None if payload is None else _body(payload))


async def call(
    upstream: HttpBackend, method: str, path: str, document: Any = None, *, raw: bytes | None = None
) -> Answer:
    async with await start(upstream, method, path, document, raw=raw) as response:
        body = b"".join([chunk async for chunk in response.body])
        return Answer(response.status, dict(response.headers), body)


# --- the official client, through an ASGI stand-in for the cloud ------------------------------------

_STATUS = {
    ErrorCode.BACKEND_UNREACHABLE: 502,
    ErrorCode.BACKEND_ERROR: 502,
    ErrorCode.PATH_NOT_ALLOWED: 403,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.TIMEOUT: 504,
}


class TranslatorApp:
    """Serves ``translate`` over HTTP the way the cloud relays it (BackendError -> status + {"error"})."""

    def __init__(self, upstream: HttpBackend) -> None:
        self.upstream = upstream

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await asgi.lifespan(receive, send)
            return
        method = scope["method"]
        body = None if method in ("GET", "HEAD") else _asgi_body(receive)
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        try:
            response = await translate(self.upstream, method, scope["path"], "", headers, body)
        except BackendError as exc:
            await asgi.respond(
                send, _STATUS.get(exc.code, 502), "application/json", json.dumps({"error": exc.message}).encode()
            )
            return
        async with response:
            # Like the cloud: a caller that goes away cancels the relay (and so closes the response).
            relay = asyncio.create_task(_relay(response, send))
            waiter = asyncio.create_task(asgi.wait_disconnect(receive))
            await asyncio.wait({relay, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for task in (relay, waiter):
                task.cancel()
            await asyncio.gather(relay, waiter, return_exceptions=True)


async def _relay(response: BackendResponse, send: Any) -> None:
    head = [(k.encode(), v.encode()) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": head})
    try:
        async for chunk in response.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except BackendError as exc:  # what the cloud appends to a broken NDJSON stream
        line = json.dumps({"error": f"stream interrupted: {exc.message}"}).encode() + b"\n"
        await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _asgi_body(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message.get("body"):
            yield message["body"]
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def serve_translator(backend: HttpBackend) -> contextlib.AbstractAsyncContextManager[str]:
    """``async with serve_translator(upstream) as url``: an Ollama-compatible base URL on loopback."""
    return running_server(TranslatorApp(backend), graceful_timeout_s=0.5)  # type: ignore[arg-type]
