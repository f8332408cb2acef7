"""Ollama request bodies (/api/chat, /api/generate) -> OpenAI request bodies (/v1/chat/completions, /v1/completions).

Validation errors are :class:`OllamaError` 400s worded for the caller. Ollama fields with no OpenAI
equivalent that only tune the runtime (``keep_alive``, ``options.num_ctx``, ``num_gpu``...) are ignored:
the OpenAI-compatible server was configured when it was started.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import msgspec

from cloudtolocalllm.bridge.openai_compat._wire import OllamaError

__all__ = [
    "GenerationRequest",
    "adapted_payload",
    "chat_request",
    "generate_request",
    "model_name",
]

# Ollama option -> OpenAI field. top_k, min_p, typical_p and repeat_penalty are not in OpenAI's API but
# llama.cpp's server, llama-cpp-python, LM Studio and vLLM accept them as extensions.
_NUMBER_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}
_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(slots=True)
class GenerationRequest:
    """What the upstream is asked, and how the answer must be shaped for the caller."""

    model: str
    stream: bool
    path: str
    """/v1/chat/completions or /v1/completions."""
    payload: dict[str, Any]
    as_chat: bool
    """Answer lines carry ``message`` (/api/chat) rather than ``response`` (/api/generate)."""
    with_context: bool = False
    """/api/generate's final line carries ``context`` (empty: there are no Ollama tokens to return)."""
    empty: bool = False
    """Nothing to generate: Ollama answers at once with ``done_reason: "load"`` (clients preload this way)."""
    keep_alive_zero: bool = False


def model_name(request: dict[str, Any]) -> str:
    """The model the caller asked for (``model``, or the legacy ``name``), passed to the server verbatim."""
    model = request.get("model") or request.get("name")
    if not isinstance(model, str) or not model:
        raise OllamaError(400, "model is required")
    return model


def _stream_flag(request: dict[str, Any]) -> bool:
    stream = request.get("stream")
    if stream is None:
        return True  # Ollama streams unless told otherwise
    if not isinstance(stream, bool):
        raise OllamaError(400, "stream must be true or false")
    return stream


def _number(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OllamaError(400, f"option {name} must be a number")
    return value


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise OllamaError(400, "option stop must be a string or a list of strings")
    return stops


def _sampling(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise OllamaError(400, "options must be a JSON object")
    out: dict[str, Any] = {}
    for name, target in _NUMBER_OPTIONS.items():
        if options.get(name) is not None:
            out[target] = _number(name, options[name])
    num_predict = options.get("num_predict")
    if num_predict is not None and _number("num_predict", num_predict) > 0:
        # Ollama's -1 (unlimited) and -2 (fill the context) are the server's default: no max_tokens.
        out["max_tokens"] = int(num_predict)
    if options.get("stop") is not None:
        out["stop"] = _stop(options["stop"])
    return out


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise OllamaError(400, 'format must be "json" or a JSON schema object')


def adapted_payload(payload: dict[str, Any], status: int, message: str) -> dict[str, Any] | None:
    """The payload to retry with when the server refused an extension it does not know, else None.

    Each adaptation removes what was refused, so retrying ends. ``stream_options`` (asked for the token
    counts) is refused by some older servers; OpenAI's ``json_schema`` by llama-cpp-python, which wants
    ``{"type": "json_object", "schema": ...}`` instead (llama.cpp's server, vLLM and LM Studio take
    json_schema). llama-cpp-python reports validation errors as 500, hence the statuses.
    """
    if status not in (400, 422, 500):
        return None
    if "stream_options" in message and "stream_options" in payload:
        return {key: value for key, value in payload.items() if key != "stream_options"}
    fmt = payload.get("response_format")
    refused_format = "response_format" in message or "json_schema" in message
    if refused_format and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return {**payload, "response_format": {"type": "json_object", "schema": fmt["json_schema"]["schema"]}}
    return None


def _image_part(index: int, image: Any) -> dict[str, Any]:
    """An Ollama image (bare base64) as an OpenAI image_url content part with a data: URL."""
    if not isinstance(image, str):
        raise OllamaError(400, f"image {index} must be a base64 string")
    if image.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": image}}  # some clients send data URLs already
    try:
        head = base64.b64decode(image[:64] + "=" * (-len(image[:64]) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise OllamaError(400, f"image {index} is not valid base64") from None
    return {"type": "image_url", "image_url": {"url": f"data:{_image_type(head)};base64,{image}"}}


def _image_type(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"GIF8"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"  # JPEG, and the type servers assume for anything else


def _content(text: str, images: Any) -> str | list[dict[str, Any]]:
    if not images:
        return text
    if not isinstance(images, list):
        raise OllamaError(400, "images must be a list of base64 strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [_image_part(i, image) for i, image in enumerate(images)]


class _ToolCallIds:
    """OpenAI links a tool result to its call by id; Ollama by order (and optionally tool_name)."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, str]] = []  # (id, function name), oldest first
        self._count = 0

    def new(self, given: Any, name: str) -> str:
        self._count += 1
        call_id = given if isinstance(given, str) and given else f"call_{self._count}"
        self._pending.append((call_id, name))
        return call_id

    def answer(self, given: Any, tool_name: Any) -> str:
        if isinstance(given, str) and given:
            self._pending = [p for p in self._pending if p[0] != given]
            return given
        match = next((p for p in self._pending if p[1] == tool_name), None) or (
            self._pending[0] if self._pending else None
        )
        if match is None:
            self._count += 1
            return f"call_{self._count}"
        self._pending.remove(match)
        return match[0]


def _tool_calls(calls: Any, ids: _ToolCallIds) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise OllamaError(400, "tool_calls must be a list")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise OllamaError(400, "each tool call needs a function with a name")
        arguments = function.get("arguments", {})
        encoded = arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()
        call_id = ids.new(call.get("id"), function["name"])
        out.append({"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": encoded}})
    return out


def _message(index: int, message: Any, ids: _ToolCallIds) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise OllamaError(400, f"message {index} must be a JSON object")
    role = message.get("role")
    if role not in _ROLES:
        raise OllamaError(400, f"message {index} has an invalid role (system, user, assistant or tool)")
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise OllamaError(400, f"message {index}: content must be a string")
    out: dict[str, Any] = {"role": role, "content": _content(text, message.get("images"))}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(message["tool_calls"], ids)
    if role == "tool":
        out["tool_call_id"] = ids.answer(message.get("tool_call_id"), message.get("tool_name"))
    return out


def _common(request: dict[str, Any]) -> dict[str, Any]:
    payload = _sampling(request.get("options"))
    response_format = _response_format(request.get("format"))
    if response_format is not None:
        payload["response_format"] = response_format
    return payload


def _finish(request: GenerationRequest, keep_alive: Any) -> GenerationRequest:
    request.keep_alive_zero = keep_alive in (0, "0", "0s", "0m")
    if request.stream:
        # Counts for the final line; servers that do not know the option ignore it (llama-cpp-python).
        request.payload["stream"] = True
        request.payload["stream_options"] = {"include_usage": True}
    return request


def chat_request(request: dict[str, Any]) -> GenerationRequest:
    """/api/chat -> /v1/chat/completions."""
    model = model_name(request)
    messages = request.get("messages") or []
    if not isinstance(messages, list):
        raise OllamaError(400, "messages must be a list")
    ids = _ToolCallIds()
    payload: dict[str, Any] = {"model": model, "messages": [_message(i, m, ids) for i, m in enumerate(messages)]}
    payload.update(_common(request))
    tools = request.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise OllamaError(400, "tools must be a list")
        payload["tools"] = tools  # Ollama's tool schema is OpenAI's
    result = GenerationRequest(model, _stream_flag(request), "/v1/chat/completions", payload, as_chat=True)
    result.empty = not messages
    return _finish(result, request.get("keep_alive"))


def generate_request(request: dict[str, Any]) -> GenerationRequest:
    """/api/generate -> /v1/chat/completions (Ollama applies the chat template), or /v1/completions when raw.

    Ollama formats the prompt with the model's template (the prompt becomes a user turn, ``system`` a
    system turn) unless ``raw`` is true. The OpenAI-compatible equivalent of "apply the template" is the
    chat endpoint; of raw text, the completions endpoint. A ``suffix`` (fill-in-the-middle) also needs
    completions.
    """
    model = model_name(request)
    prompt = request.get("prompt") or ""
    system = request.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str):
        raise OllamaError(400, "prompt and system must be strings")
    images = request.get("images")
    raw = request.get("raw") is True
    suffix = request.get("suffix")
    stream = _stream_flag(request)
    if raw or suffix:
        if images:
            raise OllamaError(400, "images need the chat template: they cannot be sent with raw or suffix")
        payload: dict[str, Any] = {"model": model, "prompt": prompt}
        if isinstance(suffix, str) and suffix:
            payload["suffix"] = suffix
        payload.update(_common(request))
        result = GenerationRequest(model, stream, "/v1/completions", payload, as_chat=False)
    else:
        turns: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        turns.append({"role": "user", "content": _content(prompt, images)})
        payload = {"model": model, "messages": turns, **_common(request)}
        result = GenerationRequest(model, stream, "/v1/chat/completions", payload, as_chat=False, with_context=True)
    result.empty = not prompt and not images
    return _finish(result, request.get("keep_alive"))
