"""/api/chat and /api/generate: request translation, the upstream call, and the answer (streamed or whole)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from cloudtolocalllm.bridge.backend import BackendError, BackendResponse
from cloudtolocalllm.bridge.openai_compat._requests import (
    GenerationRequest,
    adapted_payload,
    chat_request,
    generate_request,
)
from cloudtolocalllm.bridge.openai_compat._responses import Shape, full_answer, ndjson_lines
from cloudtolocalllm.bridge.openai_compat._sse import SseEvent, sse_events
from cloudtolocalllm.bridge.openai_compat._wire import (
    MAX_UPSTREAM_JSON_BYTES,
    NDJSON_TYPE,
    Call,
    OllamaError,
    decode_upstream,
    header_value,
    json_response,
    open_upstream,
    read_body,
    request_json,
    upstream_json,
)
from cloudtolocalllm.protocol import ErrorCode

__all__ = ["chat", "generate"]

_CHAT_PATH = "/v1/chat/completions"
T = TypeVar("T")


async def chat(call: Call) -> BackendResponse:
    return await _answer(call, chat_request(await request_json(call)))


async def generate(call: Call) -> BackendResponse:
    return await _answer(call, generate_request(await request_json(call)))


async def _answer(call: Call, request: GenerationRequest) -> BackendResponse:
    shape = Shape(request.model, request.as_chat, request.path == _CHAT_PATH, request.with_context, call.started_ns)
    if request.empty:
        return json_response(_load_answer(shape, request.keep_alive_zero))
    if not request.stream:
        document = await _send_adapting(request, lambda p: upstream_json(call, "POST", request.path, p))
        return json_response(full_answer(document, shape))
    upstream = await _send_adapting(
        request, lambda p: open_upstream(call, "POST", request.path, p, accept="text/event-stream")
    )
    if header_value(upstream.headers, "content-type").startswith("text/event-stream"):
        events = sse_events(upstream.body)
    else:
        events = _whole_answer_as_event(upstream.body)  # a server that ignored "stream": true
    return _streaming(ndjson_lines(events, shape), upstream)


def _load_answer(shape: Shape, unload: bool) -> dict[str, Any]:
    """Ollama's answer to a request with nothing to generate: the model is (un)loaded, no text."""
    line = shape.line()
    line["done"] = True
    line["done_reason"] = "unload" if unload else "load"
    return line


async def _send_adapting(request: GenerationRequest, send: Callable[[dict[str, Any]], Awaitable[T]]) -> T:
    """Send the payload; when the server refuses an extension (see adapted_payload), retry without it."""
    payload = request.payload
    while True:
        try:
            return await send(payload)
        except OllamaError as exc:
            retry = adapted_payload(payload, exc.status, exc.message)
            if retry is None:
                raise
            payload = retry


def _streaming(lines: AsyncGenerator[bytes, None], upstream: BackendResponse) -> BackendResponse:
    async def close() -> None:
        try:
            await upstream.aclose()  # aborts the upstream request: the server stops generating
        finally:
            # Raises RuntimeError if the generator is being iterated right now (another task): the
            # upstream close above already makes that iteration fail.
            with contextlib.suppress(RuntimeError):
                await lines.aclose()

    return BackendResponse(200, [("content-type", NDJSON_TYPE)], lines, close)


async def _whole_answer_as_event(body: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
    """A whole chat/completion answer as one stream chunk (``message`` becomes the ``delta``)."""
    too_large = BackendError(ErrorCode.TOO_LARGE, f"the server's answer exceeds {MAX_UPSTREAM_JSON_BYTES} bytes")
    raw = await read_body(body, MAX_UPSTREAM_JSON_BYTES, too_large)
    yield SseEvent("message", msgspec.json.encode(_as_chunk(decode_upstream(raw))).decode())


def _as_chunk(document: Any) -> Any:
    choices = document.get("choices") if isinstance(document, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return document
    first = dict(choices[0])
    if "message" in first:
        first["delta"] = first.pop("message")
    return {**document, "choices": [first, *choices[1:]]}
