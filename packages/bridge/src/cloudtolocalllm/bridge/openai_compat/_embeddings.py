"""/api/embed and the legacy /api/embeddings -> /v1/embeddings.

Ollama's /api/embed returns unit-length vectors (and truncates to ``dimensions`` before normalising);
OpenAI-compatible servers differ (llama.cpp's server normalises, llama-cpp-python does not), so /api/embed
normalises here: dot products mean cosine similarity whatever the server. The legacy /api/embeddings never
normalised in Ollama and passes the server's vector through.
"""

from __future__ import annotations

import math
from typing import Any

from cloudtolocalllm.bridge.backend import BackendError, BackendResponse
from cloudtolocalllm.bridge.openai_compat._requests import model_name
from cloudtolocalllm.bridge.openai_compat._wire import (
    Call,
    OllamaError,
    json_response,
    monotonic_ns,
    request_json,
    upstream_json,
)
from cloudtolocalllm.protocol import ErrorCode

__all__ = ["embed", "embeddings"]


def _inputs(request: dict[str, Any]) -> list[str]:
    value = request.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        raise OllamaError(400, "input must be a string or a list of strings")
    return inputs


def _dimensions(request: dict[str, Any]) -> int | None:
    value = request.get("dimensions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OllamaError(400, "dimensions must be a positive integer")
    return value


def _vectors(document: Any, count: int) -> list[list[float]]:
    """The ``data`` vectors in input order; anything malformed is the server's fault (BACKEND_ERROR)."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or len(data) != count:
        raise BackendError(ErrorCode.BACKEND_ERROR, "the OpenAI-compatible server sent a malformed embeddings answer")
    ordered = sorted(data, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0)
    vectors = []
    for item in ordered:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
            # A list of lists is what llama.cpp returns for a model without pooling: one vector per token.
            raise BackendError(
                ErrorCode.BACKEND_ERROR,
                "the OpenAI-compatible server did not return one flat vector per input (is pooling enabled?)",
            )
        vectors.append([float(x) for x in vector])
    return vectors


def _normalised(vector: list[float], dimensions: int | None) -> list[float]:
    vector = vector[:dimensions] if dimensions else vector
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _prompt_tokens(document: Any) -> int:
    usage = document.get("usage") if isinstance(document, dict) else None
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) else 0


async def embed(call: Call) -> BackendResponse:
    request = await request_json(call)
    model = model_name(request)
    inputs = _inputs(request)
    dimensions = _dimensions(request)
    if not inputs:
        return json_response({"model": model, "embeddings": []})
    document = await upstream_json(call, "POST", "/v1/embeddings", {"model": model, "input": inputs})
    vectors = [_normalised(v, dimensions) for v in _vectors(document, len(inputs))]
    return json_response(
        {
            "model": model,
            "embeddings": vectors,
            "total_duration": monotonic_ns() - call.started_ns,
            "load_duration": 0,
            "prompt_eval_count": _prompt_tokens(document),
        }
    )


async def embeddings(call: Call) -> BackendResponse:
    request = await request_json(call)
    model = model_name(request)
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise OllamaError(400, "prompt must be a string")
    if not prompt:
        return json_response({"embedding": []})  # what Ollama answers to an empty prompt
    document = await upstream_json(call, "POST", "/v1/embeddings", {"model": model, "input": prompt})
    return json_response({"embedding": _vectors(document, 1)[0]})
