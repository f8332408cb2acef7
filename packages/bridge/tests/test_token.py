"""The token source: re-read on every use, clear errors, nothing secret in messages."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from cloudtolocalllm.bridge.token import TOKEN_ENV, TokenError, TokenSource, fingerprint, unverified_expiry


def test_token_file_is_reread_every_time(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = TokenSource(token_file=path)
    assert source.read() == "first"
    path.write_text("  second  \n")
    assert source.read() == "second"
    assert source.can_change


def test_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, " env-token \n")
    source = TokenSource.from_environment(None)
    assert source.read() == "env-token"
    assert not source.can_change
    assert TOKEN_ENV in source.describe()


def test_file_wins_over_env(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file")
    assert TokenSource(token_file=path, env_token="from-env").read() == "from-file"


def test_no_token_at_all() -> None:
    with pytest.raises(TokenError, match="--token-file"):
        TokenSource(env_token="   ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "exactly one token"),
        (b"  \n", "exactly one token"),
        (b"two tokens", "exactly one token"),
        (b"\xff\xfe", "ASCII"),
        (b"x" * (64 * 1024 + 1), "larger than"),
    ],
)
def test_bad_token_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(TokenError, match=message):
        TokenSource(token_file=path).read()


def test_missing_token_file(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="does not exist"):
        TokenSource(token_file=tmp_path / "absent").read()


def test_world_readable_file_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t")
    os.chmod(path, 0o644)
    source = TokenSource(token_file=path)
    source.read()
    assert source.world_readable
    os.chmod(path, 0o600)
    source.read()
    assert not source.world_readable


def test_messages_never_contain_the_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-value another-secret")
    with pytest.raises(TokenError) as info:
        TokenSource(token_file=path).read()
    assert "secret" not in str(info.value)


def test_fingerprint_is_short_and_stable() -> None:
    assert fingerprint("abc") == fingerprint("abc") != fingerprint("abd")
    assert len(fingerprint("abc")) == 8


def _jwt(claims: object) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(json.dumps(claims).encode())}.sig"


def test_unverified_expiry() -> None:
    assert unverified_expiry(_jwt({"exp": 1700000000})) == 1700000000.0
    assert unverified_expiry(_jwt({"sub": "x"})) is None
    assert unverified_expiry(_jwt({"exp": True})) is None
    assert unverified_expiry(_jwt([1, 2])) is None
    assert unverified_expiry("not-a-jwt") is None
    assert unverified_expiry("a.!!!.c") is None
