"""Ollama's native API served by an OpenAI-compatible server (llama.cpp's server, LM Studio, vLLM...).

The cloud's public API is Ollama's, so a bridge whose backend only speaks OpenAI's /v1 API translates
(see docs/dev/openai-compat.md for the details and the reasons)::

    POST /api/chat        -> POST /v1/chat/completions   (SSE -> NDJSON, one line per chunk)
    POST /api/generate    -> POST /v1/chat/completions   (prompt as a user turn: Ollama applies the template)
                             POST /v1/completions        (raw: true, or a suffix)
    POST /api/embed       -> POST /v1/embeddings         (vectors normalised, as Ollama does)
    POST /api/embeddings  -> POST /v1/embeddings         (legacy: one vector, as the server sent it)
    GET  /api/tags        -> GET  /v1/models
    POST /api/show        -> GET  /v1/models             (synthesised; 404 for a model not served)
    GET  /api/ps          -> {"models": []}              (OpenAI servers do not say what is loaded)
    GET  /api/version     -> {"version": "0.0.0-openai-compat"}
    pull, push, create, copy, delete, blobs -> PATH_NOT_ALLOWED (403): manage models in the server itself

:func:`translate` is what :func:`cloudtolocalllm.bridge.backend.load_translator` loads. Errors are
Ollama-shaped ``{"error": "..."}`` responses: 400 for a request that cannot be translated, the upstream's
own status for the upstream's errors; tunnel-level failures (too large, unreachable) are BackendError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from cloudtolocalllm.bridge.backend import BackendError, BackendResponse, HttpBackend
from cloudtolocalllm.bridge.openai_compat._embeddings import embed, embeddings
from cloudtolocalllm.bridge.openai_compat._generation import chat, generate
from cloudtolocalllm.bridge.openai_compat._models import VERSION, ps, show, tags, version
from cloudtolocalllm.bridge.openai_compat._wire import Call, OllamaError, error_response, monotonic_ns
from cloudtolocalllm.protocol import ErrorCode, Headers
from cloudtolocalllm.protocol.routes import route_at

__all__ = ["VERSION", "translate"]

Handler = Callable[[Call], Awaitable[BackendResponse]]

_HANDLERS: dict[tuple[str, str], Handler] = {
    ("POST", "/api/chat"): chat,
    ("POST", "/api/generate"): generate,
    ("POST", "/api/embed"): embed,
    ("POST", "/api/embeddings"): embeddings,
    ("GET", "/api/tags"): tags,
    ("POST", "/api/show"): show,
    ("GET", "/api/ps"): ps,
    ("GET", "/api/version"): version,
}


def _refusal(method: str, path: str) -> BackendError | None:
    """Model management has no OpenAI equivalent: the user manages models in the server itself."""
    route = route_at(path)
    if route is None or not route.mutating:  # a blob's HEAD too: it only precedes an upload
        return None
    return BackendError(
        ErrorCode.PATH_NOT_ALLOWED,
        f"model management ({method} {path}) is not available: this bridge's backend is an OpenAI-compatible "
        "server; manage models in that server itself (llama.cpp, LM Studio, vLLM...)",
    )


async def _no_body() -> AsyncIterator[bytes]:
    nothing: tuple[bytes, ...] = ()
    for chunk in nothing:
        yield chunk


async def translate(
    upstream: HttpBackend,
    method: str,
    path: str,
    query: str,
    headers: Headers,
    body: AsyncIterator[bytes] | None,
) -> BackendResponse:
    """Serve one Ollama-native request through ``upstream``'s OpenAI API (see the module docstring).

    ``query`` and ``headers`` are not used: Ollama's API takes everything from the path and the JSON body.
    """
    refusal = _refusal(method, path)
    if refusal is not None:
        raise refusal
    handler = _HANDLERS.get(("GET" if method == "HEAD" else method, path))
    if handler is None:
        raise BackendError(ErrorCode.PATH_NOT_ALLOWED, f"{method} {path} has no OpenAI-compatible translation")
    call = Call(upstream, body, monotonic_ns())
    try:
        response = await handler(call)
    except OllamaError as exc:
        response = error_response(exc.status, exc.message)
    if method == "HEAD":
        # Same status and headers as GET (Content-Length included, as HTTP wants), no body.
        return BackendResponse(response.status, response.headers, _no_body(), response.aclose)
    return response
