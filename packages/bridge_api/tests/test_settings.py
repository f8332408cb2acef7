"""Settings for several replicas: validated at start-up with errors naming the variable."""

from __future__ import annotations

import pytest

from cloudtolocalllm.bridge_api.settings import ApiSettings, replica_url_for
from cloudtolocalllm.core import SettingsError, load_settings


def test_an_explicit_replica_url_wins() -> None:
    settings = ApiSettings(host="0.0.0.0", replica_url="http://api-2.internal:8080/")
    assert replica_url_for(settings, 8080) == "http://api-2.internal:8080"


def test_a_specific_bind_address_is_the_replica_url() -> None:
    assert replica_url_for(ApiSettings(host="127.0.0.1"), 41234) == "http://127.0.0.1:41234"
    assert replica_url_for(ApiSettings(host="::1"), 8080) == "http://[::1]:8080"


def test_behind_a_wildcard_bind_the_hostnames_address_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "api-backend-7c9f")
    monkeypatch.setattr("socket.gethostbyname", lambda name: "10.0.3.17" if name == "api-backend-7c9f" else "")
    assert replica_url_for(ApiSettings(host="0.0.0.0"), 8080) == "http://10.0.3.17:8080"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"API_REDIS_URL": "http://:secret@redis:6379"}, "API_REDIS_URL"),
        ({"API_REPLICA_URL": "api-2:8080"}, "API_REPLICA_URL"),
        ({"API_DIRECTORY_TTL_S": "3", "API_DIRECTORY_REFRESH_S": "3"}, "API_DIRECTORY_REFRESH_S"),
    ],
)
def test_bad_replica_settings_name_their_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(ApiSettings, prefix="API_", environ=environ)
    assert variable in str(caught.value)
    assert "secret" not in str(caught.value)


def test_redis_settings_are_read_from_the_environment() -> None:
    environ = {"API_REDIS_URL": "rediss://redis:6380/0", "API_DIRECTORY_TTL_S": "5", "API_DIRECTORY_REFRESH_S": "1"}
    settings = load_settings(ApiSettings, prefix="API_", environ=environ)
    assert (settings.redis_url, settings.directory_ttl_s, settings.directory_refresh_s) == (
        "rediss://redis:6380/0",
        5,
        1,
    )


def test_the_event_loop_is_uvloop_unless_asyncio_is_asked_for_and_a_typo_is_named() -> None:
    assert load_settings(ApiSettings, prefix="API_", environ={}).event_loop == "uvloop"
    assert load_settings(ApiSettings, prefix="API_", environ={"API_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(SettingsError) as caught:
        load_settings(ApiSettings, prefix="API_", environ={"API_EVENT_LOOP": "uv-loop"})
    assert "API_EVENT_LOOP: expected one of asyncio, uvloop (got 'uv-loop')" in str(caught.value)


def test_uvloop_asked_for_where_it_is_not_installed_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from cloudtolocalllm.bridge_api import cli

    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows
    monkeypatch.setenv("API_EVENT_LOOP", "uvloop")
    monkeypatch.setenv("OIDC_ISSUER", "https://issuer.example")  # valid otherwise: only the loop is wrong
    monkeypatch.setenv("OIDC_AUDIENCE", "cloudtolocalllm")
    monkeypatch.setattr(sys, "argv", ["cloudtolocalllm-api-backend"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    assert "API_EVENT_LOOP: uvloop is not installed here" in capsys.readouterr().err


def test_the_default_loop_falls_back_to_asyncios_where_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from collections.abc import Coroutine
    from typing import Any

    from cloudtolocalllm.bridge_api import cli
    from cloudtolocalllm.core import event_loop

    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows
    monkeypatch.delenv("API_EVENT_LOOP", raising=False)
    monkeypatch.setenv("OIDC_ISSUER", "https://issuer.example")
    monkeypatch.setenv("OIDC_AUDIENCE", "cloudtolocalllm")
    monkeypatch.setattr(sys, "argv", ["cloudtolocalllm-api-backend"])
    chosen: list[str] = []

    def run(main: Coroutine[Any, Any, None], *, choice: str) -> None:
        main.close()  # start-up got this far: settings, app; the server itself is not what is tested
        chosen.append(event_loop.loop_name(choice=choice))

    monkeypatch.setattr(cli.event_loop, "run", run)
    cli.main()
    assert chosen == ["asyncio"]
