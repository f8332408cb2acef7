"""The route table: each column reproduces the list it replaced, lookups match exactly, and the method matters."""

from __future__ import annotations

import pytest

from cloudtolocalllm.protocol.routes import (
    API_ROUTES,
    SAFE_METHODS,
    ApiRoute,
    Listing,
    RouteFamily,
    route_at,
    route_for,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4
BLOB = f"/api/blobs/{DIGEST}"

# The lists the table replaced, as they stood (bridge paths.py, tunnel.py, bridge_api relay.py, routing.py and
# merge.py): each column must say the same.
OLD_ALLOWLIST = {
    "/api/chat": {"POST"},
    "/api/generate": {"POST"},
    "/api/embed": {"POST"},
    "/api/embeddings": {"POST"},
    "/api/tags": {"GET", "HEAD"},
    "/api/ps": {"GET", "HEAD"},
    "/api/show": {"POST"},
    "/api/version": {"GET", "HEAD"},
    "/api/pull": {"POST"},
    "/api/push": {"POST"},
    "/api/create": {"POST"},
    "/api/copy": {"POST"},
    "/api/delete": {"DELETE"},
    BLOB: {"HEAD", "POST"},
    "/v1/chat/completions": {"POST"},
    "/v1/completions": {"POST"},
    "/v1/embeddings": {"POST"},
    "/v1/models": {"GET", "HEAD"},
    "/v1/models/llama3:8b": {"GET", "HEAD"},
}
OLD_MUTATING = {("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy")}
OLD_MUTATING |= {("DELETE", "/api/delete"), ("POST", BLOB)}
OLD_MODEL_CHANGING = {"/api/pull", "/api/create", "/api/copy", "/api/delete"}
OLD_MODEL_FIELD = {
    "/api/chat": "model",
    "/api/generate": "model",
    "/api/embed": "model",
    "/api/embeddings": "model",
    "/api/show": "model",
    "/api/pull": "model",
    "/api/push": "model",
    "/api/create": "model",
    "/api/delete": "model",
    "/api/copy": "source",
    "/v1/chat/completions": "model",
    "/v1/completions": "model",
    "/v1/embeddings": "model",
}
OLD_MODEL_MANAGEMENT = {"/api/pull", "/api/create", "/api/push", "/api/copy", "/api/delete", "/api/show"}
OLD_MERGED = {"/api/tags": ("models", "name"), "/api/ps": ("models", "name"), "/v1/models": ("data", "id")}
OLD_MODELS_WRITE = {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", BLOB}

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


def _row(path: str) -> ApiRoute:
    route = route_at(path)
    assert route is not None, path
    return route


def test_the_allowlist_is_the_old_one_method_by_method() -> None:
    for path, methods in OLD_ALLOWLIST.items():
        allowed = {method for method in METHODS if route_for(method, path) is not None}
        assert allowed == methods, path
    assert len(API_ROUTES) == len(OLD_ALLOWLIST)  # one row per path, nothing more


def test_read_only_refuses_what_it_refused() -> None:
    mutating = {(m, p) for p, methods in OLD_ALLOWLIST.items() for m in methods if _row(p).mutates(m)}
    assert mutating == OLD_MUTATING


def test_model_changing_paths_are_the_old_ones() -> None:
    assert {p for p in OLD_ALLOWLIST if _row(p).model_changing} == OLD_MODEL_CHANGING


def test_model_fields_are_the_old_ones() -> None:
    fields = {p: _row(p).model_field for p in OLD_ALLOWLIST if _row(p).model_field is not None}
    assert fields == OLD_MODEL_FIELD


def test_only_inference_needs_a_listed_model() -> None:
    needs = {p for p in OLD_MODEL_FIELD if _row(p).needs_listed_model}
    assert needs == set(OLD_MODEL_FIELD) - OLD_MODEL_MANAGEMENT
    assert not any(r.needs_listed_model for r in API_ROUTES if r.model_field is None)


def test_merged_listings_are_the_old_ones() -> None:
    merged = {r.path: r.merged for r in API_ROUTES if r.merged is not None}
    assert merged == {path: Listing(*keys) for path, keys in OLD_MERGED.items()}


def test_models_write_paths_are_the_mutating_ones() -> None:
    assert {p for p in OLD_ALLOWLIST if _row(p).mutating} == OLD_MODELS_WRITE


def test_families() -> None:
    assert {r.path for r in API_ROUTES if r.family is RouteFamily.OPENAI} == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/<name>",
    }


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/api",
        "/api/chat/",
        "/API/chat",
        "/api/chat?x=1",
        "/api/blobs/sha256:abc",
        f"{BLOB}0",
        f"{BLOB}/x",
        "/api/blobs/sha256:" + "g" * 64,
        "/api/blobs/sha256:<digest>",  # a template is no path
        "/v1/models/<name>",
        "/v1/models/",
        "/v1/models/a/b",
        "/v1/models/..",
        "/v1/models/a%2fb",
        "/v1/models/" + "a" * 201,
        "/v1/files",
        "/metrics",
    ],
)
def test_unknown_paths_have_no_route(path: str) -> None:
    assert route_at(path) is None
    assert all(route_for(method, path) is None for method in METHODS)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/chat"), ("POST", "/api/tags"), ("GET", "/api/delete"), ("GET", BLOB), ("post", "/api/chat")],
)
def test_the_method_matters(method: str, path: str) -> None:
    assert route_at(path) is not None
    assert route_for(method, path) is None


def test_safe_methods_never_mutate() -> None:
    assert not any(route.mutates(method) for route in API_ROUTES for method in SAFE_METHODS)
    assert _row(BLOB).mutating and not _row(BLOB).mutates("HEAD") and _row(BLOB).mutates("POST")


def test_head_goes_with_get_and_only_there() -> None:
    for route in API_ROUTES:
        assert ("GET" in route.methods) <= ("HEAD" in route.methods), route.path
