"""The path allowlist: exact routes only, and every shape that could be reinterpreted downstream refused."""

from __future__ import annotations

import pytest

from cloudtolocalllm.bridge.paths import check_request
from cloudtolocalllm.protocol import ErrorCode

DIGEST = "sha256:" + "0123456789abcdef" * 4

ALLOWED = [
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("GET", "/api/tags"),
    ("HEAD", "/api/tags"),
    ("GET", "/api/ps"),
    ("POST", "/api/show"),
    ("GET", "/api/version"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("HEAD", f"/api/blobs/{DIGEST}"),
    ("POST", f"/api/blobs/{DIGEST}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/llama3:8b"),
    ("GET", "/v1/models/qwen2.5-coder_7b"),
]


@pytest.mark.parametrize(("method", "path"), ALLOWED)
def test_allowed(method: str, path: str) -> None:
    assert check_request(method, path, read_only=False) is None


HOSTILE = [
    "/",
    "",
    "api/chat",
    "/api",
    "/api/",
    "/api/chat/",
    "/api/chat/x",
    "/API/chat",
    "/api/Chat",
    "/api/chat.json",
    "/api/chat;jsessionid=1",
    "/api/./chat",
    "/api/../api/chat",
    "/api/tags/..",
    "/api/tags/.",
    "/..",
    "/../etc/passwd",
    "/v1/models/..",
    "/v1/models/.",
    "/v1/models/...",
    "//api/chat",
    "/api//chat",
    "//evil.example.com/api/chat",
    "/api/chat%2f..%2f..%2fadmin",
    "/api%2fchat",
    "/api/chat%00",
    "/%2e%2e/admin",
    "/api/%2e%2e/admin",
    "/v1/models/a%2fb",
    "/api\\chat",
    "/api/chat\\..\\admin",
    "http://169.254.169.254/latest/meta-data",
    "http://127.0.0.1:8080/api/chat",
    "/http://evil/api/chat",
    "/api/chat?x=1",
    "/api/chat#frag",
    "/api/chat ",
    "/api/chat\r\nHost: evil",
    "/api/chat\t",
    "/api/ch\u00e4t",
    "/@evil/api/chat",
    "/api/blobs/sha256:abc",
    f"/api/blobs/{DIGEST}0",
    f"/api/blobs/{DIGEST}/x",
    "/api/blobs/sha256-" + "0" * 64,
    "/api/blobs/md5:" + "0" * 32,
    "/api/blobs/sha256:" + "g" * 64,
    "/v1/models/a/b",
    "/v1/models/",
    "/v1/models/" + "a" * 201,
    "/v1/chat/completions/../../admin",
    "/v1/files",
    "/v1/audio/speech",
    "/metrics",
    "/admin",
    "/api/" + "x" * 600,
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_are_refused(path: str) -> None:
    for method in ("GET", "POST", "HEAD"):
        refusal = check_request(method, path, read_only=False)
        assert refusal is not None, (method, path)
        assert refusal.code is ErrorCode.PATH_NOT_ALLOWED


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/chat"),
        ("DELETE", "/api/tags"),
        ("POST", "/api/tags"),
        ("PUT", "/api/pull"),
        ("GET", "/api/delete"),
        ("POST", "/v1/models"),
        ("GET", f"/api/blobs/{DIGEST}"),
        ("DELETE", f"/api/blobs/{DIGEST}"),
        ("CONNECT", "/api/chat"),
        ("TRACE", "/api/chat"),
        ("OPTIONS", "/api/chat"),
        ("post", "/api/chat"),
    ],
)
def test_wrong_methods_are_refused(method: str, path: str) -> None:
    refusal = check_request(method, path, read_only=False)
    assert refusal is not None and refusal.code is ErrorCode.PATH_NOT_ALLOWED
    assert "not allowed" in refusal.message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", f"/api/blobs/{DIGEST}"),
    ],
)
def test_read_only_refuses_mutations(method: str, path: str) -> None:
    refusal = check_request(method, path, read_only=True)
    assert refusal is not None and refusal.code is ErrorCode.READ_ONLY
    assert "read-only" in refusal.message
    assert check_request(method, path, read_only=False) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("GET", "/api/tags"),
        ("POST", "/api/show"),
        ("GET", "/api/ps"),
        ("HEAD", f"/api/blobs/{DIGEST}"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ],
)
def test_read_only_keeps_reads(method: str, path: str) -> None:
    assert check_request(method, path, read_only=True) is None


def test_path_check_comes_before_read_only() -> None:
    refusal = check_request("POST", "/api/../api/pull", read_only=True)
    assert refusal is not None and refusal.code is ErrorCode.PATH_NOT_ALLOWED
