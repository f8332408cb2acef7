"""The double's OpenAI mode, built from real answers: what llama-cpp-python 0.3.36's server (the one
``ctllm-local-model`` runs) sent for SmolLM2-135M, byte for byte in format (``json.dumps`` with its default
separators, LF line ends, no usage while streaming), plus the variant llama.cpp's own server (llama-server)
sends: a usage chunk with ``choices: []`` and ``timings`` before ``[DONE]``, and ``meta`` in /v1/models.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from cloudtolocalllm.devkit.ollama import asgi

MODEL = "smollm2:135m"

# --- real answers ------------------------------------------------------------------------------------


def models_document(names: list[str]) -> dict[str, Any]:
    """/v1/models as llama-cpp-python lists ``names``."""
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "owned_by": "me", "permissions": []} for n in names],
    }


LLAMA_CPP_PYTHON_MODELS = models_document([MODEL])
LLAMA_SERVER_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "qwen2.5-7b-instruct-q4_k_m",
            "object": "model",
            "created": 1747000000,
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 2,
                "n_vocab": 152064,
                "n_ctx_train": 32768,
                "n_embd": 3584,
                "n_params": 7615616512,
                "size": 4677120000,
            },
        }
    ],
}
CHAT_ANSWER = {
    "id": "chatcmpl-915b8e92-94bb-4196-874f-1db25d284dbd",
    "object": "chat.completion",
    "created": 1795677447,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"content": "Just another day at the office! I", "role": "assistant"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 32, "completion_tokens": 8, "total_tokens": 40},
}
COMPLETION_ANSWER = {
    "id": "cmpl-52e7be46-0fc2-46c0-aed4-f6d823f4b93b",
    "object": "text_completion",
    "created": 1795677454,
    "model": MODEL,
    "choices": [{"text": " a place of wonder and", "index": 0, "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
}


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-7a2e0638-407c-49ea-b9e7-28be6a08133b",
        "model": MODEL,
        "created": 1795677448,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def completion_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-2780b6c9-4ae3-4e94-a401-5172c979e90d",
        "object": "text_completion",
        "created": 1795677455,
        "model": MODEL,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def sse(*documents: Any, done: bool = True) -> bytes:
    """Events as llama-cpp-python writes them (sse-starlette: ``data: ...``, LF, blank line)."""
    out = b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in documents)
    return out + (b"data: [DONE]\n\n" if done else b"")


CHAT_STREAM = sse(
    chat_chunk({"role": "assistant"}),
    chat_chunk({"content": "Ah"}),
    chat_chunk({"content": ","}),
    chat_chunk({"content": " welcome"}),
    chat_chunk({}, "length"),
)
COMPLETION_STREAM = sse(
    completion_chunk(" a"), completion_chunk(" place"), completion_chunk(" where"), completion_chunk("", "length")
)
LLAMA_SERVER_USAGE_CHUNK = {
    "choices": [],
    "created": 1747000000,
    "id": "chatcmpl-x1",
    "model": MODEL,
    "system_fingerprint": "b5350-abc",
    "object": "chat.completion.chunk",
    "usage": {"completion_tokens": 3, "prompt_tokens": 31, "total_tokens": 34},
    "timings": {"prompt_n": 31, "prompt_ms": 40.5, "predicted_n": 3, "predicted_ms": 120.25},
}


# --- the server --------------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class OpenAIServer:
    """The double's OpenAI mode: what llama.cpp's servers (and LM Studio) answer, set by tests; it records every
    request it gets. ``models`` (the /v1/models document) defaults to the double's model names."""

    models: Any = None
    chat_answer: Any = field(default_factory=lambda: CHAT_ANSWER)
    completion_answer: Any = field(default_factory=lambda: COMPLETION_ANSWER)
    chat_stream: bytes = CHAT_STREAM
    completion_stream: bytes = COMPLETION_STREAM
    stream_content_type: str = "text/event-stream; charset=utf-8"
    piece_size: int = 0
    """0: each stream is sent in one write; n: in writes of n bytes (SSE lines split anywhere)."""
    held: asyncio.Queue[bytes | None] | None = None
    """When set, streams send what tests put here (None ends the stream), as the model produces it."""
    errors: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    """path -> (status, content type, body) to answer instead."""
    refuse_json_schema: bool = False
    refuse_stream_options: bool = False
    requests: list[Recorded] = field(default_factory=list)
    stream_started: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def last(self, path: str) -> Recorded:
        return next(r for r in reversed(self.requests) if r.path == path)

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any, model_names: list[str]) -> None:
        raw = await asgi.read_body(receive)
        body = json.loads(raw) if raw else None
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Recorded(scope["method"], scope["path"], headers, body))
        path = scope["path"]
        if path in self.errors:
            status, content_type, payload = self.errors[path]
            await asgi.respond(send, status, content_type, payload)
        elif self.refuse_json_schema and (body or {}).get("response_format", {}).get("type") == "json_schema":
            # llama-cpp-python's words, status and all
            message = "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type')}"
            error = {"error": {"message": message, "type": "internal_server_error", "param": None, "code": None}}
            await asgi.respond(send, 500, "application/json", json.dumps(error).encode())
        elif self.refuse_stream_options and "stream_options" in (body or {}):
            error = {"error": {"message": "Unrecognized request argument supplied: stream_options"}}
            await asgi.respond(send, 400, "application/json", json.dumps(error).encode())
        elif path == "/v1/models":
            models = self.models if self.models is not None else models_document(model_names)
            await asgi.respond(send, 200, "application/json", json.dumps(models).encode())
        elif path == "/v1/embeddings":
            await asgi.respond(send, 200, "application/json", json.dumps(_embeddings(body)).encode())
        elif path in ("/v1/chat/completions", "/v1/completions"):
            await self._completion(path, body, receive, send)
        else:
            await asgi.respond(send, 404, "application/json", b'{"detail":"Not Found"}')

    async def _completion(self, path: str, body: Any, receive: Any, send: Any) -> None:
        chat = path == "/v1/chat/completions"
        if not body.get("stream"):
            answer = self.chat_answer if chat else self.completion_answer
            await asgi.respond(send, 200, "application/json", json.dumps(answer).encode())
            return
        await send(asgi.start(200, self.stream_content_type))
        self.stream_started.set()
        pump = asyncio.create_task(self._pump(send, self.chat_stream if chat else self.completion_stream))
        waiter = asyncio.create_task(asgi.wait_disconnect(receive))
        done, _ = await asyncio.wait({pump, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            self.disconnected.set()
            pump.cancel()
        else:
            waiter.cancel()
        await asyncio.gather(pump, waiter, return_exceptions=True)

    async def _pump(self, send: Any, canned: bytes) -> None:
        if self.held is not None:
            while (chunk := await self.held.get()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            size = self.piece_size or len(canned) or 1
            for offset in range(0, len(canned), size):
                await send({"type": "http.response.body", "body": canned[offset : offset + size], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _embeddings(body: Any) -> dict[str, Any]:
    inputs = [body["input"]] if isinstance(body["input"], str) else body["input"]
    # Listed in reverse to check that the translator orders by index; not normalised, like llama-cpp-python.
    data = [
        {"object": "embedding", "embedding": [3.0 * (i + 1), 4.0 * (i + 1), 0.0, 0.0], "index": i}
        for i in range(len(inputs))
    ]
    return {
        "object": "list",
        "data": data[::-1],
        "model": body["model"],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
