"""The API key format and the scope each relayed path needs (pure functions)."""

from __future__ import annotations

import math

import pytest

from cloudtolocalllm.bridge_api.keys.format import (
    KEY_PATTERN,
    MalformedKey,
    display_prefix,
    generate_key,
    key_digest,
    looks_like_key,
    parse_key,
)
from cloudtolocalllm.bridge_api.keys.scopes import INFERENCE, MODELS_WRITE
from cloudtolocalllm.bridge_api.routing import scope_for_path


def test_a_key_has_the_scannable_prefix_256_bits_and_a_valid_checksum() -> None:
    key = generate_key()
    assert KEY_PATTERN.fullmatch(key)
    assert looks_like_key(key) and parse_key(key) == key
    assert 43 * math.log2(62) >= 256  # the random part's length in base62
    assert len({generate_key() for _ in range(1000)}) == 1000


def test_a_changed_character_fails_the_checksum_without_any_lookup() -> None:
    key = generate_key()
    flipped = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    with pytest.raises(MalformedKey, match="checksum"):
        parse_key(flipped)


@pytest.mark.parametrize("token", ["ctllm_", "ctllm_short", "ctllm_" + "!" * 49, "sk-" + "a" * 49, ""])
def test_malformed_keys_are_refused(token: str) -> None:
    with pytest.raises(MalformedKey):
        parse_key(token)


def test_the_listed_prefix_is_a_short_non_secret_start_and_the_digest_is_sha256() -> None:
    key = generate_key()
    assert display_prefix(key) == key[:14] and key.startswith(display_prefix(key))
    assert len(key_digest(key)) == 32 and key_digest(key) != key_digest(generate_key())


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/api/chat", INFERENCE),
        ("/api/generate", INFERENCE),
        ("/api/embed", INFERENCE),
        ("/api/tags", INFERENCE),
        ("/api/show", INFERENCE),
        ("/api/ps", INFERENCE),
        ("/v1/chat/completions", INFERENCE),
        ("/v1/models", INFERENCE),
        ("/api/pull", MODELS_WRITE),
        ("/api/push", MODELS_WRITE),
        ("/api/create", MODELS_WRITE),
        ("/api/copy", MODELS_WRITE),
        ("/api/delete", MODELS_WRITE),
        ("/api/blobs/sha256:" + "0" * 64, MODELS_WRITE),
        # Not in the route table: the bridge refuses them whatever the key holds.
        ("/api/blobs/sha256:abc", INFERENCE),
        ("/v1/files", INFERENCE),
    ],
)
def test_scope_for_each_path(path: str, scope: str) -> None:
    assert scope_for_path(path) == scope
