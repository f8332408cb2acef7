"""Which requests the bridge forwards: an explicit allowlist of backend paths and methods.

The cloud names the backend path of every request it relays. That path is attacker-controlled as far as
the bridge is concerned (a compromised or buggy cloud must not be able to use the bridge to reach anything
else on the user's network, or anything on the backend beyond the LLM API), so it is matched *exactly*
against the route table (``cloudtolocalllm.protocol.routes``), after refusing every shape that some
layer between here and the backend could reinterpret: dot segments, empty segments, backslashes,
percent-encoding (an encoded ``/`` or ``..`` decoded later), absolute URLs, upper/lower case games and
trailing slashes.

Pure functions, no IO: :func:`check_request` returns a :class:`Refusal` or None.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudtolocalllm.protocol import ErrorCode
from cloudtolocalllm.protocol.routes import route_at

__all__ = ["Refusal", "check_request"]

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


def check_request(method: str, path: str, *, read_only: bool) -> Refusal | None:
    """Whether the bridge may forward ``method path``: None to forward it, else a Refusal.

    ``path`` is the backend path from the Open frame (the query string travels separately and is not
    part of it). Refusals are PATH_NOT_ALLOWED (not an allowed route or method) or READ_ONLY.
    """
    problem = _shape_problem(path)
    if problem is not None:
        return Refusal(ErrorCode.PATH_NOT_ALLOWED, f"path not allowed: {problem}")
    route = route_at(path)
    if route is None:
        return Refusal(
            ErrorCode.PATH_NOT_ALLOWED,
            "path not allowed: the bridge forwards only the Ollama and OpenAI-compatible API paths",
        )
    if method not in route.methods:
        allowed = ", ".join(sorted(route.methods))
        return Refusal(ErrorCode.PATH_NOT_ALLOWED, f"method {method} not allowed on this path ({allowed})")
    if read_only and route.mutates(method):
        return Refusal(
            ErrorCode.READ_ONLY, f"this bridge runs read-only: {method} {path} would change its models or model files"
        )
    return None
