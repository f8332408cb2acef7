"""``login <cloud>`` with nothing but the cloud's URL (its discovery document names the rest), ``run`` with
no flags after it, and how a sign-in that is over ends ``run`` (exit status 3, never a loop of refusals)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import stat
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from cloudtolocalllm.bridge import cli
from cloudtolocalllm.bridge.backoff import Backoff
from cloudtolocalllm.bridge.cloud import CLOUD_FILE, CloudUnavailable, cloud_origin, fetch_cloud_config
from cloudtolocalllm.bridge.config import BridgeSettings, ConfigError
from cloudtolocalllm.bridge.credentials import CREDENTIALS_FILE, StoredCredentialsSource, load_credentials
from cloudtolocalllm.bridge.exits import EXIT_SIGN_IN
from cloudtolocalllm.bridge.runner import Bridge
from cloudtolocalllm.core.testing import running_server, wait_until

from .cloud_stack import AUDIENCE, Cloud, api_backend


async def _login_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``cloudtolocalllm-bridge <argv>`` in a thread, approving the code it prints like a user would."""

    def run() -> int:
        try:
            cli.main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)
        raise AssertionError("main() returned without SystemExit")

    task = asyncio.create_task(asyncio.to_thread(run))
    printed = io.StringIO()

    def code_shown() -> bool:
        printed.write(capsys.readouterr().out)
        return "enter the code" in printed.getvalue() or task.done()

    await wait_until(code_shown, timeout=10)
    code = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})", printed.getvalue())
    page = re.search(r"To sign in, open (\S+)", printed.getvalue())
    assert code and page, printed.getvalue()
    form = {"user_code": code.group(1), "subject": "alice", "action": "approve"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(page.group(1), data=form, allow_redirects=False) as approved,
    ):
        assert approved.status == 200, await approved.text()
    status = await asyncio.wait_for(task, 15)
    printed.write(capsys.readouterr().out)
    return status, printed.getvalue()


async def test_login_with_only_the_cloud_url_then_run_without_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_STATE_DIR", str(state))
    async with api_backend(tmp_path / "keys") as cloud:
        status, printed = await _login_command(["login", cloud.url, "--no-browser"], capsys)
        assert status == 0, printed
        assert f"Signed in to {cloud.url} as alice" in printed
        assert "user_code=" in printed  # the verification_uri_complete, for a browser elsewhere

        stored = json.loads((state / CLOUD_FILE).read_text())
        assert stored["cloud_url"] == cloud.url
        assert stored["websocket_url"] == cloud.url.replace("http://", "ws://") + "/ws/bridge"
        assert stored["issuer"] == cloud.url + "/dev-issuer" and stored["client_id"] == "cloudtolocalllm-bridge"
        for name in (CLOUD_FILE, CREDENTIALS_FILE):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
        credentials = load_credentials(state / CREDENTIALS_FILE)
        assert credentials is not None and credentials.audience == AUDIENCE and credentials.refresh_token
        assert credentials.access_token not in printed

        # `run` with no flags at all: the cloud from cloud.json, the token from the stored login.
        settings, _ = cli.resolve_cloud(BridgeSettings(state_dir=str(state), backend_url="http://127.0.0.1:9"))
        source, warnings = cli.select_token_source(settings, token_flag=None, environ={})
        assert isinstance(source, StoredCredentialsSource) and warnings == []
        bridge = Bridge(settings, source)
        task = asyncio.create_task(bridge.run())
        try:
            await wait_until(lambda: bridge.active is not None and bridge.active.welcome is not None, timeout=10)
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.get(
                    cloud.url + "/api/bridge/status", headers={"Authorization": f"Bearer {cloud.token('alice')}"}
                ) as response,
            ):
                assert [b["id"] for b in (await response.json())["bridges"]] == [bridge.bridge_id]
        finally:
            bridge.request_stop()
            assert await asyncio.wait_for(task, 10) == 0


async def test_a_cloud_without_a_discovery_document_is_explained(tmp_path: Path) -> None:
    from starlette.applications import Starlette

    async with running_server(Starlette()) as url:
        with pytest.raises(CloudUnavailable, match="answered HTTP 404"):
            await fetch_cloud_config(url)
    with pytest.raises(CloudUnavailable, match="cannot reach"):
        await fetch_cloud_config("http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("typed", "origin"),
    [
        ("app.example.com", "https://app.example.com"),
        ("https://app.example.com/", "https://app.example.com"),
        ("wss://app.example.com/ws/bridge", "https://app.example.com"),
        ("https://example.com/llm/api/ollama", "https://example.com/llm"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_the_cloud_url_as_typed(typed: str, origin: str) -> None:
    assert cloud_origin(typed) == origin


@pytest.mark.parametrize("bad", ["ftp://app.example.com", "https://u:p@app.example.com", "https://app.example.com/?a"])
def test_unusable_cloud_urls_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        cloud_origin(bad)


def test_run_without_a_cloud_says_how_to_sign_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"login https://app.example.com"):
        cli.resolve_cloud(BridgeSettings(state_dir=str(tmp_path)))


def test_the_browser_is_opened_only_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import webbrowser

    opened: list[str] = []

    def fake_open(url: str, new: int = 0) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", fake_open)
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.open_browser("https://x/activate?user_code=A") is False  # SSH or a server: print only
    assert opened == []
    monkeypatch.setenv("DISPLAY", ":0")
    assert cli.open_browser("https://x/activate?user_code=A") is True
    assert opened == ["https://x/activate?user_code=A"]

    def broken(url: str, new: int = 0) -> bool:
        raise webbrowser.Error("no runnable browser")

    monkeypatch.setattr(webbrowser, "open", broken)
    assert cli.open_browser("https://x/activate") is False  # never fails the login


# --- the end of a sign-in -----------------------------------------------------------------------------


async def _login_for(issuer: Cloud, state: Path) -> None:
    """A stored login from ``issuer``'s dev issuer, approved through the real device flow."""
    settings = BridgeSettings(
        state_dir=str(state), issuer_url=issuer.url + "/dev-issuer", audience=AUDIENCE, client_id="bridge"
    )
    out = io.StringIO()
    task = asyncio.create_task(cli.login(settings, out=out))
    await wait_until(lambda: "enter the code" in out.getvalue() or task.done())
    code = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})", out.getvalue())
    assert code is not None, task
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(
            issuer.url + "/dev-issuer/activate",
            data={"user_code": code.group(1), "subject": "alice", "action": "approve"},
        ) as approved,
    ):
        assert approved.status == 200
    await asyncio.wait_for(task, 10)


def _bridge(cloud: Cloud, state: Path, **overrides: Any) -> Bridge:
    settings = BridgeSettings(
        cloud_url=cloud.url, state_dir=str(state), backend_url="http://127.0.0.1:9", status_interval_s=30.0
    )
    settings = msgspec.structs.replace(settings, **overrides)
    source, _ = cli.select_token_source(settings, token_flag=None, environ={})
    return Bridge(settings, source, backoff=Backoff(base_s=0.05, cap_s=0.2, rng=random.Random(2)), token_poll_s=0.1)


async def test_a_sign_in_the_cloud_keeps_refusing_ends_run_after_one_renewal(tmp_path: Path) -> None:
    """Signed in at another cloud's issuer: this cloud refuses its tokens (unknown signing key) while the
    issuer renews them. One renewal, one more refusal, then exit 3: no loop of refusals."""
    async with api_backend(tmp_path / "other-keys") as other, api_backend(tmp_path / "keys") as cloud:
        state = tmp_path / "state"
        await _login_for(other, state)
        first = load_credentials(state / CREDENTIALS_FILE)
        bridge = _bridge(cloud, state)
        assert await asyncio.wait_for(bridge.run(), 20) == EXIT_SIGN_IN
        renewed = load_credentials(state / CREDENTIALS_FILE)
    assert first is not None and renewed is not None
    assert renewed.refresh_token != first.refresh_token  # it renewed the login before it gave up
    message = bridge.exit_message or ""
    assert message.splitlines()[-1] == f"sign in again with: cloudtolocalllm-bridge login {cloud.url}"
    assert "refused the sign-in" in message


async def test_a_revoked_refresh_token_ends_run_with_the_sign_in_status(tmp_path: Path) -> None:
    async with api_backend(tmp_path / "keys") as cloud:
        state = tmp_path / "state"
        await _login_for(cloud, state)
        stored = load_credentials(state / CREDENTIALS_FILE)
        assert stored is not None
        # The access token has expired and the issuer no longer knows the refresh token (revoked).
        expired = msgspec.structs.replace(stored, expires_at=0.0, obtained_at=-3600.0, refresh_token="revoked")
        from cloudtolocalllm.bridge.credentials import save_credentials

        save_credentials(state / CREDENTIALS_FILE, expired)
        bridge = _bridge(cloud, state)
        assert await asyncio.wait_for(bridge.run(), 20) == EXIT_SIGN_IN
    assert (bridge.exit_message or "").splitlines()[
        -1
    ] == f"sign in again with: cloudtolocalllm-bridge login {cloud.url}"
    assert bridge.sessions == []  # it never dialled the cloud with a token it knew was dead


def test_flags_and_variables_win_over_the_discovery_document(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudtolocalllm.bridge.cloud import CloudConfig

    document = CloudConfig(
        version=1,
        cloud_url="https://app.example.com",
        issuer="https://tenant.auth0.com/",
        client_id="from-cloud",
        audience="https://api.example",
        websocket_url="wss://app.example.com/ws/bridge",
        api_base="https://app.example.com/api/ollama",
    )

    async def fetched(url: str) -> CloudConfig:
        return document

    monkeypatch.setattr(cli, "fetch_cloud_config", fetched)
    for name in ("ISSUER_URL", "CLIENT_ID", "AUDIENCE"):
        monkeypatch.delenv(f"CLOUDTOLOCALLLM_BRIDGE_{name}", raising=False)
    args = cli._parser().parse_args(["login", "https://app.example.com"])
    settings, cloud, scope = cli._login_settings(args)
    assert (settings.issuer_url, settings.client_id, settings.audience) == (
        "https://tenant.auth0.com/",
        "from-cloud",
        "https://api.example",
    )
    assert cloud == document and scope == "openid profile offline_access"

    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_CLIENT_ID", "from-env")
    args = cli._parser().parse_args(["login", "https://app.example.com", "--audience", "flag-api", "--scope", "s"])
    settings, _, scope = cli._login_settings(args)
    assert (settings.client_id, settings.audience, scope) == ("from-env", "flag-api", "s")
