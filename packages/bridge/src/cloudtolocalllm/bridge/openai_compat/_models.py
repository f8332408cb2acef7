"""/api/tags, /api/show, /api/ps and /api/version, synthesised from the server's /v1/models.

OpenAI's model list says little (an id, sometimes ``created`` and ``owned_by``); llama.cpp's server adds
``meta`` (parameter count, file size, training context) and vLLM ``max_model_len``. What no server says is
guessed from the model's name (``qwen2.5-7b-instruct-q4_k_m`` -> family qwen2.5, 7B, Q4_K_M) or left
empty. Every entry keeps ``name``: the cloud merges the listings of a user's bridges by it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from cloudtolocalllm.bridge.backend import BackendResponse
from cloudtolocalllm.bridge.openai_compat._wire import (
    Call,
    OllamaError,
    json_response,
    request_json,
    upstream_json,
)
from cloudtolocalllm.protocol.models import same_model

__all__ = ["VERSION", "ps", "show", "tags", "version"]

VERSION = "0.0.0-openai-compat"
"""What /api/version reports: not an Ollama release, so nothing can mistake it for one."""

_MAX_MODELS = 1000
_MAX_MODEL_NAME = 256
# Go's zero time: what Ollama itself writes for a time it does not know.
_UNKNOWN_TIME = "0001-01-01T00:00:00Z"
_SIZE = re.compile(r"(?<![a-z0-9])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_QUANT = re.compile(r"(?<![a-z0-9])(i?q\d(?:_[a-z0-9]+)*|bf16|fp16|f16|f32)(?![a-z0-9])", re.IGNORECASE)


async def version(call: Call) -> BackendResponse:
    return json_response({"version": VERSION})


async def ps(call: Call) -> BackendResponse:
    # OpenAI servers do not say which of their models are loaded (LM Studio lists every downloaded one),
    # so none is claimed to be.
    return json_response({"models": []})


async def _served(call: Call) -> list[dict[str, Any]]:
    """The /v1/models entries with a usable id, deduplicated and capped like the bridge's probe."""
    document = await upstream_json(call, "GET", "/v1/models")
    entries = document.get("data") if isinstance(document, dict) else None
    served: dict[str, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else []:
        name = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(name, str) and 0 < len(name) <= _MAX_MODEL_NAME and name not in served:
            served[name] = entry
        if len(served) >= _MAX_MODELS:
            break
    return list(served.values())


def _meta(entry: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's server describes the model file in ``meta``; other servers send nothing."""
    meta = entry.get("meta")
    return meta if isinstance(meta, dict) else {}


def _base_name(name: str) -> str:
    return name.rsplit("/", 1)[-1].lower()


def _parameter_size(name: str, meta: dict[str, Any]) -> str:
    count = meta.get("n_params")
    if isinstance(count, int) and count > 0:
        if count >= 1_000_000_000:
            return f"{count / 1e9:.1f}".removesuffix(".0") + "B"
        if count >= 1_000_000:
            return f"{count / 1e6:.0f}M"
        return str(count)
    match = _SIZE.search(_base_name(name))
    return f"{match.group(1)}{match.group(2).upper()}" if match else ""


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    name: str = entry["id"]
    meta = _meta(entry)
    family = re.split(r"[-:_]", _base_name(name), maxsplit=1)[0]
    quant = _QUANT.search(_base_name(name))
    return {
        "parent_model": "",
        # vLLM serves Hugging Face checkpoints; llama.cpp, llama-cpp-python and LM Studio serve GGUF.
        "format": "safetensors" if entry.get("owned_by") == "vllm" else "gguf",
        "family": family,
        "families": [family],
        "parameter_size": _parameter_size(name, meta),
        "quantization_level": quant.group(1).upper() if quant else "",
    }


def _modified_at(entry: dict[str, Any]) -> str:
    created = entry.get("created")
    if isinstance(created, int) and not isinstance(created, bool) and 0 < created < 253_402_300_800:
        return datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    return _UNKNOWN_TIME


def _tag(entry: dict[str, Any]) -> dict[str, Any]:
    name: str = entry["id"]
    meta = _meta(entry)
    size = meta.get("size")
    return {
        "name": name,
        "model": name,
        "modified_at": _modified_at(entry),
        "size": size if isinstance(size, int) and size >= 0 else 0,
        # A stable stand-in: clients show a digest prefix and use it to tell models apart.
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": _details(entry),
    }


async def tags(call: Call) -> BackendResponse:
    return json_response({"models": [_tag(entry) for entry in await _served(call)]})


def _model_info(entry: dict[str, Any], family: str) -> dict[str, Any]:
    meta = _meta(entry)
    info: dict[str, Any] = {"general.architecture": family}
    if isinstance(meta.get("n_params"), int):
        info["general.parameter_count"] = meta["n_params"]
    # Clients read the context window from "<architecture>.context_length".
    context = meta.get("n_ctx_train", entry.get("max_model_len"))
    if isinstance(context, int) and context > 0:
        info[f"{family}.context_length"] = context
    return info


async def show(call: Call) -> BackendResponse:
    request = await request_json(call)
    asked = request.get("model") or request.get("name")
    if not isinstance(asked, str) or not asked:
        raise OllamaError(400, "model is required")
    entry = next((e for e in await _served(call) if same_model(asked, e["id"])), None)
    if entry is None:
        raise OllamaError(404, f"model '{asked}' not found")
    details = _details(entry)
    return json_response(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "license": "",
            "details": details,
            "model_info": _model_info(entry, details["family"]),
            "capabilities": ["completion"],
            "modified_at": _modified_at(entry),
        }
    )
