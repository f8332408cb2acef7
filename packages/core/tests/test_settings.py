from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest

from cloudtolocalllm.core.auth import AuthSettings
from cloudtolocalllm.core.settings import SettingsError, load_settings


class Sample(msgspec.Struct, kw_only=True):
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    public_url: str
    debug: bool = False
    log_level: Literal["debug", "info", "warning"] = "info"
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    timeout_s: float = 5.0
    api_secret: str | None = None


def test_converts_every_type_from_strings() -> None:
    env = {
        "APP_PORT": "8080",
        "APP_PUBLIC_URL": "https://x.test",
        "APP_DEBUG": "true",
        "APP_LOG_LEVEL": "debug",
        "APP_ALLOWED_HOSTS": "a.test, b.test,",
        "APP_TIMEOUT_S": "2.5",
    }
    settings = load_settings(Sample, prefix="APP_", environ=env)
    assert settings == Sample(
        port=8080,
        public_url="https://x.test",
        debug=True,
        log_level="debug",
        allowed_hosts=["a.test", "b.test"],
        timeout_s=2.5,
    )


def test_defaults_apply_when_unset() -> None:
    settings = load_settings(Sample, environ={"PORT": "1", "PUBLIC_URL": "u"})
    assert settings.debug is False
    assert settings.allowed_hosts == []


def test_one_error_names_every_bad_variable() -> None:
    env = {"PORT": "70000", "DEBUG": "maybe", "LOG_LEVEL": "loud"}
    with pytest.raises(SettingsError) as caught:
        load_settings(Sample, environ=env)
    assert set(caught.value.problems) == {"PORT", "PUBLIC_URL", "DEBUG", "LOG_LEVEL"}
    message = str(caught.value)
    assert "PUBLIC_URL: required" in message
    assert "PORT: Expected `int` <= 65535" in message
    assert "'70000'" in message
    assert "LOG_LEVEL: expected one of debug, info, warning (got 'loud')" in message  # the choices, not just "invalid"


def test_sensitive_values_are_not_echoed() -> None:
    class WithSecret(msgspec.Struct):
        token_ttl: int

    with pytest.raises(SettingsError) as caught:
        load_settings(WithSecret, environ={"TOKEN_TTL": "hunter2"})
    assert "hunter2" not in str(caught.value)
    assert "TOKEN_TTL" in caught.value.problems


def test_auth_settings_require_exactly_one_issuer() -> None:
    with pytest.raises(SettingsError) as none_set:
        load_settings(AuthSettings, environ={})
    assert "AUTH0_DOMAIN" in none_set.value.problems

    with pytest.raises(SettingsError) as two_set:
        load_settings(AuthSettings, environ={"AUTH0_DOMAIN": "t.auth0.com", "DEV_AUTH": "1"})
    assert set(two_set.value.problems) == {"DEV_AUTH", "AUTH0_AUDIENCE"}


def test_auth_settings_refuse_symmetric_algorithms() -> None:
    env = {"OIDC_ISSUER": "https://i.test/", "OIDC_AUDIENCE": "a", "AUTH_ALGORITHMS": "RS256,HS256"}
    with pytest.raises(SettingsError) as caught:
        load_settings(AuthSettings, environ=env)
    assert "HS256" in caught.value.problems["AUTH_ALGORITHMS"]


def test_auth0_settings_derive_issuer() -> None:
    settings = load_settings(AuthSettings, environ={"AUTH0_DOMAIN": "tenant.eu.auth0.com", "AUTH0_AUDIENCE": "api"})
    assert settings.issuer == "https://tenant.eu.auth0.com/"
    assert settings.audience == "api"


def test_a_variable_can_come_from_a_file(tmp_path: Path) -> None:
    # Docker and Kubernetes secrets are files: NAME_FILE names one, its single trailing newline is dropped.
    (tmp_path / "secret").write_text("s3cr3t value\n")
    environ = {"S_PORT": "80", "S_PUBLIC_URL": "https://x", "S_API_SECRET_FILE": str(tmp_path / "secret")}
    assert load_settings(Sample, prefix="S_", environ=environ).api_secret == "s3cr3t value"


def test_value_files_fail_clearly_and_never_echo_their_content(tmp_path: Path) -> None:
    (tmp_path / "port").write_text("not-a-port\n")
    (tmp_path / "huge").write_text("x" * 70_000)
    with pytest.raises(SettingsError) as info:
        load_settings(
            Sample,
            prefix="S_",
            environ={
                "S_PUBLIC_URL": "https://x",
                "S_LOG_LEVEL": "info",
                "S_LOG_LEVEL_FILE": str(tmp_path / "port"),  # both: ambiguous
                "S_API_SECRET_FILE": str(tmp_path / "missing"),
                "S_PORT_FILE": str(tmp_path / "port"),
                "S_TIMEOUT_S_FILE": str(tmp_path / "huge"),
            },
        )
    problems = info.value.problems
    assert problems["S_LOG_LEVEL"] == "set either S_LOG_LEVEL or S_LOG_LEVEL_FILE, not both"
    assert "cannot read" in problems["S_API_SECRET_FILE"] and "No such file" in problems["S_API_SECRET_FILE"]
    assert "larger than 65536 bytes" in problems["S_TIMEOUT_S_FILE"]
    assert "S_PORT" in problems and "not-a-port" not in str(info.value)


def test_oidc_jwks_file_is_read_and_checked_at_start_up(tmp_path: Path) -> None:
    base = {"OIDC_ISSUER": "https://idp.test/", "OIDC_AUDIENCE": "api"}
    with pytest.raises(SettingsError) as missing:
        load_settings(AuthSettings, environ={**base, "OIDC_JWKS_FILE": str(tmp_path / "none.json")})
    assert "cannot read" in missing.value.problems["OIDC_JWKS_FILE"]
    (tmp_path / "empty.json").write_text('{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}')
    with pytest.raises(SettingsError) as symmetric:
        load_settings(AuthSettings, environ={**base, "OIDC_JWKS_FILE": str(tmp_path / "empty.json")})
    assert "no usable signing key" in symmetric.value.problems["OIDC_JWKS_FILE"]
    with pytest.raises(SettingsError) as alone:
        load_settings(AuthSettings, environ={"DEV_AUTH": "1", "OIDC_JWKS_FILE": str(tmp_path / "empty.json")})
    assert "OIDC_ISSUER" in alone.value.problems["OIDC_JWKS_FILE"]


class Choices(msgspec.Struct, kw_only=True):
    mode: Literal["fast", "safe"] | None = None
    level: Annotated[Literal["low", "high"], msgspec.Meta(title="level")] = "low"


def test_a_bad_choice_is_refused_naming_the_choices_through_optional_and_annotated() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(Choices, environ={"MODE": "quick", "LEVEL": "mid"})
    assert caught.value.problems == {
        "MODE": "expected one of fast, safe (got 'quick')",
        "LEVEL": "expected one of low, high (got 'mid')",
    }
    assert load_settings(Choices, environ={"MODE": "safe"}) == Choices(mode="safe")
