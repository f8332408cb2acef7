from __future__ import annotations

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
