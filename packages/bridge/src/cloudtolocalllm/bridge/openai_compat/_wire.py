"""Shared plumbing: reading the caller's JSON, calling the upstream /v1 API, building Ollama responses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from cloudtolocalllm.bridge.backend import BackendError, BackendResponse, HttpBackend
from cloudtolocalllm.protocol import ErrorCode, Headers

__all__ = [
    "JSON_TYPE",
    "MAX_REQUEST_BYTES",
    "MAX_UPSTREAM_JSON_BYTES",
    "NDJSON_TYPE",
    "Call",
    "OllamaError",
    "decode_upstream",
    "dumps_line",
    "error_response",
    "header_value",
    "json_response",
    "monotonic_ns",
    "now_rfc3339",
    "open_upstream",
    "read_body",
    "request_json",
    "upstream_json",
]

MAX_REQUEST_BYTES = 32 * 1024 * 1024
"""Chat histories with base64 images fit easily; anything bigger is not an LLM request."""
MAX_UPSTREAM_JSON_BYTES = 256 * 1024 * 1024
"""A whole non-streamed answer (embeddings of many long inputs are the largest)."""
_MAX_ERROR_BYTES = 64 * 1024
_MAX_ERROR_MESSAGE = 2000
_REFUSED_STATUSES = frozenset({401, 403, 407})

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"


class OllamaError(Exception):
    """Answer with ``status`` and Ollama's error body ``{"error": message}`` (not a tunnel failure)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Call:
    """One translated request: the upstream server, the caller's body and when the work started."""

    upstream: HttpBackend
    body: AsyncIterator[bytes] | None
    started_ns: int


def now_rfc3339() -> str:
    """A timestamp like Ollama's ``created_at`` (UTC, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def monotonic_ns() -> int:
    return time.monotonic_ns()


def dumps_line(document: Any) -> bytes:
    """One NDJSON line."""
    return msgspec.json.encode(document) + b"\n"


async def _single(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


def json_response(document: Any, status: int = 200) -> BackendResponse:
    payload = msgspec.json.encode(document)
    headers: Headers = [("content-type", JSON_TYPE), ("content-length", str(len(payload)))]
    return BackendResponse(status, headers, _single(payload))


def error_response(status: int, message: str) -> BackendResponse:
    return json_response({"error": message}, status)


async def read_body(chunks: AsyncIterator[bytes], limit: int, too_large: BackendError) -> bytes:
    """The whole body, refusing (``too_large``) as soon as it passes ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def request_json(call: Call) -> dict[str, Any]:
    """The caller's JSON object. Errors are phrased like Ollama's (400 ``{"error": ...}``)."""
    if call.body is None:
        raise OllamaError(400, "missing request body")
    too_large = BackendError(ErrorCode.TOO_LARGE, f"the request body exceeds {MAX_REQUEST_BYTES} bytes")
    raw = await read_body(call.body, MAX_REQUEST_BYTES, too_large)
    if not raw.strip():
        raise OllamaError(400, "missing request body")
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise OllamaError(400, f"invalid JSON in the request body: {exc}") from None
    if not isinstance(document, dict):
        raise OllamaError(400, "the request body must be a JSON object")
    return document


def _upstream_headers(payload: bytes | None, accept: str) -> Headers:
    # Our own headers, not the caller's: the upstream sees a plain JSON API client. Identity encoding
    # because the body is parsed here from the raw (undecoded) bytes HttpBackend yields.
    headers: Headers = [("accept", accept), ("accept-encoding", "identity")]
    if payload is not None:
        # An explicit length keeps aiohttp from sending a chunked body, which not every server accepts.
        headers += [("content-type", "application/json"), ("content-length", str(len(payload)))]
    return headers


async def open_upstream(
    call: Call, method: str, path: str, document: Any = None, *, accept: str = "application/json"
) -> BackendResponse:
    """Send one /v1 request; an error status becomes :class:`OllamaError` with the same status."""
    payload = None if document is None else msgspec.json.encode(document)
    body = None if payload is None else _single(payload)
    response = await call.upstream.request(method, path, "", _upstream_headers(payload, accept), body)
    try:
        encoding = header_value(response.headers, "content-encoding")
        if encoding not in ("", "identity"):
            raise BackendError(
                ErrorCode.BACKEND_ERROR, f"the OpenAI-compatible server answered {encoding}-encoded despite identity"
            )
        if response.status >= 400:
            raw = await _read_prefix(response.body, _MAX_ERROR_BYTES)
            raise _upstream_error(response.status, upstream_error_message(response.status, raw))
    except BaseException:
        await response.aclose()
        raise
    return response


async def upstream_json(call: Call, method: str, path: str, document: Any = None) -> Any:
    """A whole JSON answer from the upstream (for non-streamed calls)."""
    async with await open_upstream(call, method, path, document) as response:
        too_large = BackendError(
            ErrorCode.TOO_LARGE, f"the OpenAI-compatible server's answer exceeds {MAX_UPSTREAM_JSON_BYTES} bytes"
        )
        raw = await read_body(response.body, MAX_UPSTREAM_JSON_BYTES, too_large)
    return decode_upstream(raw)


def decode_upstream(raw: bytes | str) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BackendError(ErrorCode.BACKEND_ERROR, "the OpenAI-compatible server sent malformed JSON") from None


async def _read_prefix(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    data = b""
    async for chunk in chunks:
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def _upstream_error(status: int, message: str) -> OllamaError:
    if status in _REFUSED_STATUSES:
        # The caller would take these for the cloud refusing *their* token or scope; it is the local
        # server refusing the bridge (typically a server started with an API key).
        return OllamaError(502, f"the local OpenAI-compatible server refused the bridge (HTTP {status}): {message}")
    return OllamaError(status, message)


def upstream_error_message(status: int, raw: bytes) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}`` and its variants)."""
    message = ""
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        message = raw.decode("utf-8", errors="replace").strip()
    else:
        message = _message_of(document)
    if not message:
        message = f"the OpenAI-compatible server answered HTTP {status}"
    return message[:_MAX_ERROR_MESSAGE]


def _message_of(document: Any) -> str:
    if isinstance(document, str):
        return document
    if not isinstance(document, dict):
        return ""
    # OpenAI/llama.cpp/vLLM: {"error": {"message"}}; LM Studio and others: {"error": "..."};
    # FastAPI validation: {"detail": ...}; some proxies: {"message": "..."}.
    for key in ("error", "message", "detail"):
        value = document.get(key)
        if isinstance(value, dict):
            return _message_of(value.get("message", ""))
        if isinstance(value, str) and value:
            return value
        if value:
            return msgspec.json.encode(value).decode()
    return ""


def header_value(headers: Headers, name: str) -> str:
    """The first value of header ``name``, stripped and lower-cased, or ""."""
    return next((value.strip().lower() for key, value in headers if key.lower() == name), "")
