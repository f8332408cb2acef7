"""Which requests the bridge forwards: an explicit allowlist of backend paths and methods.

The cloud names the backend path of every request it relays. That path is attacker-controlled as far as
the bridge is concerned (a compromised or buggy cloud must not be able to use the bridge to reach anything
else on the user's network, or anything on the backend beyond the LLM API), so it is matched *exactly*
against the Ollama and OpenAI API routes below, after refusing every shape that some layer between here
and the backend could reinterpret: dot segments, empty segments, backslashes, percent-encoding (an
encoded ``/`` or ``..`` decoded later), absolute URLs, upper/lower case games and trailing slashes.

Pure functions, no IO: :func:`check_request` returns a :class:`Refusal` or None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from cloudtolocalllm.core.protocol import ErrorCode

__all__ = [
    "MUTATING_PATHS",
    "OLLAMA_ROUTES",
    "OPENAI_ROUTES",
    "Refusal",
    "RouteFamily",
    "check_request",
    "match_route",
]


class RouteFamily(Enum):
    """Which API a path belongs to (the OpenAI-compatible backend kind forwards only OPENAI as-is)."""

    OLLAMA = "ollama"
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class Route:
    """One allowed route: methods, and whether the request changes what the backend holds."""

    template: str
    methods: frozenset[str]
    family: RouteFamily
    mutating: bool = False


def _route(template: str, methods: str, family: RouteFamily, *, mutating: bool = False) -> Route:
    allowed = set(methods.split())
    if "GET" in allowed:
        allowed.add("HEAD")  # HEAD is GET without a body; Ollama answers it on every GET route
    return Route(template, frozenset(allowed), family, mutating)


_O = RouteFamily.OLLAMA
_V1 = RouteFamily.OPENAI

# Exact paths. Methods follow Ollama's router (server/routes.go); HEAD is allowed wherever GET is.
OLLAMA_ROUTES: dict[str, Route] = {
    r.template: r
    for r in (
        _route("/api/chat", "POST", _O),
        _route("/api/generate", "POST", _O),
        _route("/api/embed", "POST", _O),
        _route("/api/embeddings", "POST", _O),
        _route("/api/tags", "GET", _O),
        _route("/api/ps", "GET", _O),
        _route("/api/show", "POST", _O),
        _route("/api/version", "GET", _O),
        _route("/api/pull", "POST", _O, mutating=True),
        _route("/api/push", "POST", _O, mutating=True),
        _route("/api/create", "POST", _O, mutating=True),
        _route("/api/copy", "POST", _O, mutating=True),
        _route("/api/delete", "DELETE", _O, mutating=True),
    )
}
OPENAI_ROUTES: dict[str, Route] = {
    r.template: r
    for r in (
        _route("/v1/chat/completions", "POST", _V1),
        _route("/v1/completions", "POST", _V1),
        _route("/v1/embeddings", "POST", _V1),
        _route("/v1/models", "GET", _V1),
    )
}
# Parameterised routes: a fixed prefix and one final segment matched by a strict pattern.
_BLOB = re.compile(r"/api/blobs/sha256:[0-9a-fA-F]{64}")
_BLOB_HEAD = _route("/api/blobs/sha256:<digest>", "HEAD", _O)
_BLOB_UPLOAD = _route("/api/blobs/sha256:<digest>", "POST", _O, mutating=True)
# A model name as one path segment: letters, digits and . _ : - (no '/', no '%', no dot-only names).
_MODEL = re.compile(r"/v1/models/(?![.]+$)[A-Za-z0-9._:-]{1,200}")
_MODEL_ROUTE = _route("/v1/models/<name>", "GET", _V1)

MUTATING_PATHS = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/...")
"""What ``--read-only`` refuses (blob uploads included; HEAD on a blob only checks it exists)."""

_MAX_PATH = 512


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not forwarded: the StreamError code and a message for the caller."""

    code: ErrorCode
    message: str


def _shape_problem(path: str) -> str | None:
    """Why ``path`` is not a plain, already-normalised absolute path, or None."""
    if not path.startswith("/"):
        return "the path must start with '/'"
    if len(path) > _MAX_PATH:
        return "the path is too long"
    if "%" in path:
        return "percent-encoded paths are not forwarded"
    if "\\" in path:
        return "backslashes are not allowed in the path"
    if "//" in path:
        return "empty path segments are not allowed"
    if any(segment in (".", "..") for segment in path.split("/")):
        return "dot segments are not allowed in the path"
    if any(ord(ch) <= 0x20 or ord(ch) >= 0x7F or ch in "?#@;" for ch in path):
        return "the path holds characters that are not forwarded"
    return None


def match_route(method: str, path: str) -> Route | None:
    """The route ``path`` matches exactly (ignoring the method), or None."""
    route = OLLAMA_ROUTES.get(path) or OPENAI_ROUTES.get(path)
    if route is not None:
        return route
    if _BLOB.fullmatch(path):
        return _BLOB_UPLOAD if method == "POST" else _BLOB_HEAD
    if _MODEL.fullmatch(path):
        return _MODEL_ROUTE
    return None


def check_request(method: str, path: str, *, read_only: bool) -> Refusal | None:
    """Whether the bridge may forward ``method path``: None to forward it, else a Refusal.

    ``path`` is the backend path from the Open frame (the query string travels separately and is not
    part of it). Refusals are PATH_NOT_ALLOWED (not an allowed route or method) or READ_ONLY.
    """
    problem = _shape_problem(path)
    if problem is not None:
        return Refusal(ErrorCode.PATH_NOT_ALLOWED, f"path not allowed: {problem}")
    route = match_route(method, path)
    if route is None:
        return Refusal(
            ErrorCode.PATH_NOT_ALLOWED,
            "path not allowed: the bridge forwards only the Ollama and OpenAI-compatible API paths",
        )
    if method not in route.methods:
        allowed = ", ".join(sorted(route.methods))
        return Refusal(ErrorCode.PATH_NOT_ALLOWED, f"method {method} not allowed on this path ({allowed})")
    if read_only and route.mutating:
        return Refusal(
            ErrorCode.READ_ONLY,
            "this bridge runs read-only: pull, push, create, copy, delete and blob uploads are refused",
        )
    return None
