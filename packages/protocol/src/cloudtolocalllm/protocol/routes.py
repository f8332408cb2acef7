"""Every Ollama and OpenAI API path the tunnel carries, and what each end needs to know about it.

One row per path. The bridge's allowlist and read-only mode, the cloud's relay (which JSON field names the
model), routing (whether an unlisted model is refused), merged listings and API-key scopes all read this
table, so a path is added or changed here once.

A row's path is exact, or a template whose ``<digest>`` or ``<name>`` placeholder matches one strict final
segment. Methods follow Ollama's router (server/routes.go); ``HEAD`` is allowed wherever ``GET`` is.
Pure data and lookups, no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

__all__ = ["API_ROUTES", "SAFE_METHODS", "ApiRoute", "Listing", "RouteFamily", "route_at", "route_for"]

SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
"""Methods that only read (RFC 9110 §9.2.1): never a change to the backend's models, on any route."""


class RouteFamily(Enum):
    """Which API a path belongs to (an OpenAI-compatible backend forwards only OPENAI as it is)."""

    OLLAMA = "ollama"
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class Listing:
    """A listing the cloud answers by merging every bridge's: where its entries are and what names one."""

    list_key: str
    id_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiRoute:
    """One path, and what every part of the system needs to know about it."""

    path: str
    """The exact path, or a template with one ``<digest>`` or ``<name>`` final segment."""
    family: RouteFamily
    methods: frozenset[str]
    model_field: str | None = None
    """The JSON body field that names the model (the cloud routes by it); None: the body names none."""
    needs_listed_model: bool = False
    """Refused (404) unless a bridge lists the model. Model management is not: the backend knows best, and a
    bridge's list lags a local ``ollama pull`` by one status interval."""
    mutating: bool = False
    """Its unsafe methods change what the backend holds: read-only mode refuses them, and an API key needs
    ``models:write`` for any method on the path."""
    model_changing: bool = False
    """Success changes the backend's model list (the bridge reports the new list at once)."""
    merged: Listing | None = None
    """GET is answered by merging the listings of all the caller's bridges."""
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    """Set for a template path; derived from ``path``."""

    def mutates(self, method: str) -> bool:
        """Whether ``method`` on this route changes what the backend holds (what read-only refuses)."""
        return self.mutating and method not in SAFE_METHODS


# A placeholder matches one final segment: a blob's hex digest; a model name of letters, digits and . _ : -
# (no '/', no '%', no dot-only names, which a later layer could read as a dot segment).
_PLACEHOLDERS: Final = {
    "<digest>": "[0-9a-fA-F]{64}",
    "<name>": "(?![.]+$)[A-Za-z0-9._:-]{1,200}",
}


def _pattern(path: str) -> re.Pattern[str] | None:
    for placeholder, regex in _PLACEHOLDERS.items():
        if path.endswith(placeholder):
            return re.compile(re.escape(path.removesuffix(placeholder)) + regex)
    return None


def _row(
    path: str,
    methods: str,
    family: RouteFamily,
    *,
    model_field: str | None = None,
    needs_listed_model: bool = False,
    mutating: bool = False,
    model_changing: bool = False,
    merged: Listing | None = None,
) -> ApiRoute:
    allowed = set(methods.split())
    if "GET" in allowed:
        allowed.add("HEAD")  # HEAD is GET without a body; Ollama answers it on every GET route
    return ApiRoute(
        path=path,
        family=family,
        methods=frozenset(allowed),
        model_field=model_field,
        needs_listed_model=needs_listed_model,
        mutating=mutating,
        model_changing=model_changing,
        merged=merged,
        pattern=_pattern(path),
    )


def _inference(path: str, family: RouteFamily) -> ApiRoute:
    return _row(path, "POST", family, model_field="model", needs_listed_model=True)


def _management(path: str, method: str = "POST", *, model_field: str = "model", model_changing: bool) -> ApiRoute:
    return _row(path, method, RouteFamily.OLLAMA, model_field=model_field, mutating=True, model_changing=model_changing)


_O = RouteFamily.OLLAMA
_V1 = RouteFamily.OPENAI

API_ROUTES: Final[tuple[ApiRoute, ...]] = (
    _inference("/api/chat", _O),
    _inference("/api/generate", _O),
    _inference("/api/embed", _O),
    _inference("/api/embeddings", _O),
    _row("/api/tags", "GET", _O, merged=Listing("models", "name")),
    _row("/api/ps", "GET", _O, merged=Listing("models", "name")),
    _row("/api/show", "POST", _O, model_field="model"),
    _row("/api/version", "GET", _O),
    _management("/api/pull", model_changing=True),
    _management("/api/push", model_changing=False),  # sends a model away: the local list stays as it is
    _management("/api/create", model_changing=True),
    _management("/api/copy", model_field="source", model_changing=True),
    _management("/api/delete", "DELETE", model_changing=True),
    # HEAD asks whether the blob is there, POST uploads it; a blob is no model until a create uses it.
    _row("/api/blobs/sha256:<digest>", "HEAD POST", _O, mutating=True),
    _inference("/v1/chat/completions", _V1),
    _inference("/v1/completions", _V1),
    _inference("/v1/embeddings", _V1),
    _row("/v1/models", "GET", _V1, merged=Listing("data", "id")),
    _row("/v1/models/<name>", "GET", _V1),
)

_EXACT: Final = {route.path: route for route in API_ROUTES if route.pattern is None}
_TEMPLATED: Final = tuple(route for route in API_ROUTES if route.pattern is not None)


def route_at(path: str) -> ApiRoute | None:
    """The row ``path`` matches exactly (whatever the method), or None."""
    route = _EXACT.get(path)
    if route is not None:
        return route
    for templated in _TEMPLATED:
        if templated.pattern is not None and templated.pattern.fullmatch(path):
            return templated
    return None


def route_for(method: str, path: str) -> ApiRoute | None:
    """The row for ``method path``: None for an unknown path, or a method the path does not take."""
    route = route_at(path)
    return route if route is not None and method in route.methods else None
