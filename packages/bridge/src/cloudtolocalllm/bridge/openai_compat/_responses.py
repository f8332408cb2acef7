"""OpenAI answers (chat.completion[.chunk], text_completion) -> Ollama's /api/chat and /api/generate lines.

Streaming: every SSE chunk that carries text becomes one NDJSON line as soon as it is parsed; tool calls
(streamed as fragments) are assembled and sent in one line when the model has finished them, as Ollama
does; the last line has ``done: true``, the done_reason and the metrics.

Metrics: token counts come from ``usage`` (requested with ``stream_options.include_usage``) or llama.cpp's
``timings``; durations from ``timings`` when present, otherwise measured here (prompt evaluation = time to
the first token, evaluation = the rest). A server that reports no usage while streaming
(llama-cpp-python) gets ``eval_count`` = the number of streamed chunks: these servers send one token per
chunk. Unknown values are 0, which is what Ollama's own omitted fields mean.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from cloudtolocalllm.bridge.backend import BackendError
from cloudtolocalllm.bridge.openai_compat._sse import SseEvent
from cloudtolocalllm.bridge.openai_compat._wire import (
    decode_upstream,
    dumps_line,
    monotonic_ns,
    now_rfc3339,
    upstream_error_message,
)
from cloudtolocalllm.protocol import ErrorCode

__all__ = ["Shape", "full_answer", "ndjson_lines"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shape:
    """How answers are phrased for the caller, and what the upstream speaks."""

    model: str
    as_chat: bool
    """Lines carry ``message`` (/api/chat) rather than ``response`` (/api/generate)."""
    upstream_chat: bool
    """The upstream is /v1/chat/completions (deltas) rather than /v1/completions (text)."""
    with_context: bool = False
    started_ns: int = 0

    def line(
        self, content: str = "", thinking: str = "", tool_calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.as_chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            line["message"] = message
        else:
            line["response"] = content
            if thinking:
                line["thinking"] = thinking
        line["done"] = False
        return line

    def final(
        self,
        done_reason: str,
        metrics: dict[str, int],
        content: str = "",
        thinking: str = "",
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The ``done: true`` line; it carries the whole answer when the answer was not streamed."""
        line = self.line(content, thinking, tool_calls)
        line["done"] = True
        line["done_reason"] = done_reason
        if self.with_context:
            line["context"] = []
        line.update(metrics)
        return line


class ToolCalls:
    """Tool calls as OpenAI streams them (fragments keyed by index, arguments as pieces of a JSON string)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            return
        for position, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", position)
            entry = self._calls.setdefault(index if isinstance(index, int) else position, {"name": "", "args": ""})
            function = fragment.get("function") or {}
            name = function.get("name")
            if isinstance(name, str) and not entry["name"]:
                entry["name"] = name  # sent once, in the first fragment
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                entry["args"] += arguments
            elif isinstance(arguments, dict):
                entry["args"] = arguments

    def ollama(self) -> list[dict[str, Any]]:
        """Ollama's shape: ``{"function": {"name", "arguments": {...}}}``, arguments decoded."""
        return [
            {"function": {"name": entry["name"], "arguments": _arguments(entry["args"])}}
            for _, entry in sorted(self._calls.items())
        ]


def _arguments(raw: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not raw.strip():
        return {}
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        # Ollama's clients require an object; a model that wrote something else gets an empty one.
        logger.warning("tool call arguments are not a JSON object; sent as {}")
        return {}
    return decoded


@dataclass(slots=True)
class Piece:
    """What one chunk (or a whole answer) holds, whichever endpoint it came from."""

    content: str = ""
    thinking: str = ""
    tool_fragments: Any = None
    """The chunk's raw ``tool_calls`` list, for :meth:`ToolCalls.add`."""
    finish_reason: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_ms: float | None = None
    predicted_ms: float | None = None

    def absorb(self, document: dict[str, Any]) -> None:
        usage = document.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"), self.prompt_tokens)
            self.completion_tokens = _int(usage.get("completion_tokens"), self.completion_tokens)
        timings = document.get("timings")  # llama.cpp's server, on the last chunk
        if isinstance(timings, dict):
            self.prompt_tokens = self.prompt_tokens if self.prompt_tokens is not None else _int(timings.get("prompt_n"))
            if self.completion_tokens is None:
                self.completion_tokens = _int(timings.get("predicted_n"))
            self.prompt_ms = _float(timings.get("prompt_ms"), self.prompt_ms)
            self.predicted_ms = _float(timings.get("predicted_ms"), self.predicted_ms)

    def metrics(self, started_ns: int, first_ns: int | None, chunks: int) -> dict[str, int]:
        end = monotonic_ns()
        total = end - started_ns
        if self.prompt_ms is not None and self.predicted_ms is not None:
            prompt_ns, eval_ns = int(self.prompt_ms * 1e6), int(self.predicted_ms * 1e6)
        elif first_ns is not None:
            prompt_ns, eval_ns = first_ns - started_ns, end - first_ns
        else:
            prompt_ns, eval_ns = 0, total
        return {
            "total_duration": total,
            "load_duration": 0,  # the server loaded its model when it started; nothing to measure here
            "prompt_eval_count": self.prompt_tokens or 0,
            "prompt_eval_duration": prompt_ns,
            "eval_count": self.completion_tokens if self.completion_tokens is not None else chunks,
            "eval_duration": eval_ns,
        }


def _int(value: Any, default: int | None = None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(value: Any, default: float | None = None) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def done_reason(finish_reason: str | None) -> str:
    # Ollama knows "stop" and "length" (plus "load"/"unload"); tool_calls and content_filter end a turn.
    return "length" if finish_reason == "length" else "stop"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise BackendError(ErrorCode.BACKEND_ERROR, "the OpenAI-compatible server sent a malformed answer")
    return document


def _piece(document: dict[str, Any], upstream_chat: bool, key: str) -> Piece:
    """``key`` is "delta" for a streamed chat chunk, "message" for a whole chat answer."""
    choices = document.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    piece = Piece(finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None)
    if not upstream_chat:
        piece.content = _text(choice.get("text"))
        return piece
    body = choice.get(key)
    if isinstance(body, dict):
        piece.content = _text(body.get("content"))
        # llama.cpp and vLLM name it reasoning_content; some servers reasoning.
        piece.thinking = _text(body.get("reasoning_content")) or _text(body.get("reasoning"))
        piece.tool_fragments = body.get("tool_calls")
    return piece


def full_answer(document: Any, shape: Shape) -> dict[str, Any]:
    """A non-streamed OpenAI answer as Ollama's single ``done: true`` object."""
    document = _object(document)
    piece = _piece(document, shape.upstream_chat, "message")
    calls = ToolCalls()
    calls.add(piece.tool_fragments)
    usage = Usage()
    usage.absorb(document)
    metrics = usage.metrics(shape.started_ns, None, 0)
    return shape.final(done_reason(piece.finish_reason), metrics, piece.content, piece.thinking, calls.ollama())


def _document(event: SseEvent) -> dict[str, Any] | str:
    """The chunk an event carries, or (as a str) the error the server reported inside the stream.

    llama.cpp sends ``error: {...}`` lines (an "error" event here); vLLM and LM Studio a data chunk
    holding only ``{"error": ...}``.
    """
    if event.event == "error":
        return upstream_error_message(500, event.data.encode())
    document = _object(decode_upstream(event.data))
    if "error" in document and "choices" not in document:
        return upstream_error_message(500, event.data.encode())
    return document


class _StreamState:
    """What a stream has shown so far: the counts and tool calls for its last lines."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.usage = Usage()
        self.calls = ToolCalls()
        self.first_ns: int | None = None
        self.chunks = 0
        self.finish: str | None = None

    def absorb(self, document: dict[str, Any]) -> bytes | None:
        """The NDJSON line for one chunk, or None if it carries no text (role-only, usage, finish)."""
        piece = _piece(document, self.shape.upstream_chat, "delta")
        self.usage.absorb(document)
        self.finish = piece.finish_reason or self.finish
        self.calls.add(piece.tool_fragments)
        if not (piece.content or piece.thinking):
            return None
        self.chunks += 1
        self.first_ns = self.first_ns or monotonic_ns()
        return dumps_line(self.shape.line(piece.content, piece.thinking))

    def end(self, saw_done: bool) -> list[bytes]:
        if not saw_done and self.finish is None:
            # llama-cpp-python, for one, closes the stream without a word when the prompt does not fit.
            return [dumps_line({"error": "the OpenAI-compatible server ended the stream without finishing the answer"})]
        lines = [dumps_line(self.shape.line(tool_calls=self.calls.ollama()))] if self.calls else []
        metrics = self.usage.metrics(self.shape.started_ns, self.first_ns, self.chunks)
        return [*lines, dumps_line(self.shape.final(done_reason(self.finish), metrics))]


async def ndjson_lines(events: AsyncIterator[SseEvent], shape: Shape) -> AsyncGenerator[bytes, None]:
    """Translate an SSE stream to Ollama's NDJSON, one line per text chunk, without buffering."""
    state = _StreamState(shape)
    saw_done = False
    async for event in events:
        if event.data.strip() == "[DONE]":
            saw_done = True
            break
        document = _document(event)
        if isinstance(document, str):
            # Ollama reports a mid-stream failure as a last {"error"} line; its clients raise on it.
            yield dumps_line({"error": document})
            return
        line = state.absorb(document)
        if line is not None:
            yield line
    for line in state.end(saw_done):
        yield line
