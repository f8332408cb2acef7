"""``login`` (device flow against the real dev issuer), the stored credentials, and ``run`` renewing them
against a real api-backend; plus where ``run`` takes its token from."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from starlette.routing import Mount

from cloudtolocalllm.bridge import cli
from cloudtolocalllm.bridge.backoff import Backoff
from cloudtolocalllm.bridge.config import BridgeSettings
from cloudtolocalllm.bridge.credentials import (
    CREDENTIALS_FILE,
    Credentials,
    StoredCredentialsSource,
    load_credentials,
    save_credentials,
)
from cloudtolocalllm.bridge.oauth import discover, issuer_session, poll_for_token, start_device_flow
from cloudtolocalllm.bridge.runner import Bridge
from cloudtolocalllm.bridge.token import KEY_ENV, TOKEN_ENV, SignInRefused, TokenError, TokenSource
from cloudtolocalllm.bridge_api.app import build_app
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.app import ServiceInfo, create_app
from cloudtolocalllm.core.auth import AuthSettings, TokenVerifier
from cloudtolocalllm.core.testing import refused_port, running_server, wait_until
from cloudtolocalllm.dev_issuer.device_flow import DevDeviceFlow, dev_issuer_routes
from cloudtolocalllm.dev_issuer.issuer import DevIssuer

ISSUER = "http://issuer.test/dev-issuer"
AUDIENCE = "cloudtolocalllm-test"


@dataclass
class IssuerServer:
    flow: DevDeviceFlow
    url: str  # where a client finds it (the discovery document is at url + /.well-known/...)
    keys: Path

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=self.flow.issuer.key_source(), leeway_s=0)


IssuerFactory = Callable[..., AbstractAsyncContextManager[IssuerServer]]


@pytest.fixture
def make_issuer(tmp_path: Path) -> IssuerFactory:
    @asynccontextmanager
    async def factory(**flow_options: Any) -> AsyncIterator[IssuerServer]:
        dev = DevIssuer(tmp_path / "issuer", issuer=ISSUER, audience=AUDIENCE)
        flow = DevDeviceFlow(dev, **{"interval_s": 0.2, **flow_options})
        app = create_app(ServiceInfo("dev-issuer", "1"), [Mount("/dev-issuer", routes=dev_issuer_routes(dev, flow))])
        async with running_server(app) as url:
            yield IssuerServer(flow, url + "/dev-issuer", tmp_path / "issuer")

    return factory


async def _bridge_status(cloud_url: str, token: str) -> tuple[int, Any]:
    """GET /api/bridge/status with ``token``: the status code and the JSON document (the text if not JSON)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(cloud_url + "/api/bridge/status", headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        text = await response.text()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def _settings(tmp_path: Path, issuer_url: str, **overrides: Any) -> BridgeSettings:
    options: dict[str, Any] = {
        "issuer_url": issuer_url,
        "audience": AUDIENCE,
        "state_dir": str(tmp_path / "state"),
        **overrides,
    }
    return BridgeSettings(**options)


async def _login_approving(settings: BridgeSettings, subject: str = "alice") -> tuple[Credentials, str]:
    """Run ``login`` and approve it like a developer would: read the code it prints, POST it to /activate."""
    out = io.StringIO()
    task = asyncio.create_task(cli.login(settings, out=out))
    await wait_until(lambda: "enter the code" in out.getvalue() or task.done())
    printed = out.getvalue()
    code = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})", printed)
    verify = re.search(r"To sign in, open (\S+)", printed)
    assert code and verify, printed
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(verify.group(1), allow_redirects=False) as page:
            assert page.status == 200 and "Approve" in await page.text()
        form = {"user_code": code.group(1), "subject": subject, "action": "approve"}
        async with http.post(verify.group(1), data=form, allow_redirects=False) as approved:
            assert approved.status == 200, await approved.text()
    credentials = await asyncio.wait_for(task, 10)
    return credentials, out.getvalue()


# --- login -----------------------------------------------------------------------------------------


async def test_login_stores_private_credentials_the_issuer_signed(make_issuer: IssuerFactory, tmp_path: Path) -> None:
    async with make_issuer() as issuer:
        settings = _settings(tmp_path, issuer.url)
        credentials, printed = await _login_approving(settings)
        principal = await issuer.verifier().verify(credentials.access_token)
    assert principal.subject == "alice"
    assert "(or open " in printed and "user_code=" in printed
    assert credentials.access_token not in printed and (credentials.refresh_token or "") not in printed

    path = tmp_path / "state" / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = load_credentials(path)
    assert stored == credentials
    assert stored.issuer == issuer.url and stored.client_id == "cloudtolocalllm-bridge"
    assert stored.audience == AUDIENCE and stored.token_endpoint == issuer.url + "/oauth/token"
    assert stored.refresh_token and "offline_access" in stored.scope
    assert stored.obtained_at <= time.time() < stored.expires_at
    assert not list(path.parent.glob(".*tmp")), "no temp file left behind"


async def test_login_through_api_backend_with_the_code_flow_behind_it(tmp_path: Path) -> None:
    """api-backend serves the device flow in front of the browser sign-in flow at the dev issuer's path."""
    auth = AuthSettings(
        dev_auth=True, dev_issuer_dir=str(tmp_path / "issuer"), dev_issuer_url=ISSUER, dev_audience=AUDIENCE
    )
    async with running_server(build_app(ApiSettings(data_dir=str(tmp_path / "api-data")), auth)) as url:
        credentials, _ = await _login_approving(_settings(tmp_path, url + "/dev-issuer"), subject="bob")
        code, document = await _bridge_status(url, credentials.access_token)
        assert code == 200, document
        source = StoredCredentialsSource(tmp_path / "state" / CREDENTIALS_FILE)
        renewed = await source.fresh(rejected=credentials.access_token)  # forced: a refresh through api-backend
    stored = load_credentials(tmp_path / "state" / CREDENTIALS_FILE)
    assert stored is not None and stored.access_token == renewed
    assert stored.refresh_token != credentials.refresh_token


async def test_login_denied_or_misconfigured(make_issuer: IssuerFactory, tmp_path: Path) -> None:
    async with make_issuer() as issuer:
        out = io.StringIO()
        task = asyncio.create_task(cli.login(_settings(tmp_path, issuer.url), out=out))
        await wait_until(lambda: "enter the code" in out.getvalue())
        code = re.search(r"enter the code (\S+)", out.getvalue())
        assert code is not None and issuer.flow.deny(code.group(1))
        from cloudtolocalllm.bridge.oauth import OAuthError

        with pytest.raises(OAuthError) as info:
            await asyncio.wait_for(task, 10)
        assert info.value.error == "access_denied"
        with pytest.raises(cli.ConfigError, match="no audience"):
            await cli.login(_settings(tmp_path, issuer.url, audience=""))
    with pytest.raises(cli.ConfigError, match="no issuer"):
        await cli.login(_settings(tmp_path, ""))
    assert not (tmp_path / "state" / CREDENTIALS_FILE).exists()


async def test_slow_down_polls_five_seconds_less_often_from_then_on(make_issuer: IssuerFactory) -> None:
    """RFC 8628 §3.5 against the real dev issuer, which answers slow_down when polled too soon."""
    async with make_issuer(interval_s=0.2) as issuer, issuer_session(10) as http:
        endpoints = await discover(http, issuer.url)
        authorization = await start_device_flow(
            http, endpoints, client_id="cloudtolocalllm-bridge", audience=AUDIENCE, scope="openid offline_access"
        )
        assert authorization.interval == 0.2
        asked: list[float] = []
        slowed: list[float] = []

        async def sleep(seconds: float) -> None:
            asked.append(seconds)
            if seconds < 1:
                await asyncio.sleep(0.01)  # too soon for the issuer's 0.2 s from the second poll on
            else:
                assert issuer.flow.approve(authorization.user_code.replace("-", ""), "carol")
                await asyncio.sleep(0.3)

        answer = await poll_for_token(
            http, endpoints, authorization, client_id="cloudtolocalllm-bridge", sleep=sleep, on_slow_down=slowed.append
        )
    assert asked == [0.2, 0.2, pytest.approx(5.2)]  # pending, slow_down, then the longer interval
    assert slowed == [pytest.approx(5.2)]
    assert answer.access_token and answer.refresh_token


def test_login_and_logout_commands(
    make_issuer: IssuerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_STATE_DIR", str(tmp_path / "state"))
    with refused_port() as port, pytest.raises(SystemExit) as info:
        cli.main(["login", "--issuer", f"http://127.0.0.1:{port}/dev-issuer", "--audience", AUDIENCE])
    assert info.value.code == 1
    assert "cannot reach the issuer" in capsys.readouterr().err
    save_credentials(tmp_path / "state" / CREDENTIALS_FILE, _credentials("tok", refresh="r"))
    with pytest.raises(SystemExit) as info:
        cli.main(["logout"])
    assert info.value.code == 0
    assert "Logged out" in capsys.readouterr().out
    assert not (tmp_path / "state" / CREDENTIALS_FILE).exists()


# --- run with the stored login ---------------------------------------------------------------------


async def test_run_renews_the_login_and_the_tunnel_stays_up(make_issuer: IssuerFactory, tmp_path: Path) -> None:
    """Access tokens live 4 s; api-backend allows no leeway and no grace: only renewals keep the session."""
    async with make_issuer(access_token_ttl_s=4) as issuer:
        await _login_approving(_settings(tmp_path, issuer.url))
        auth = AuthSettings(
            dev_auth=True,
            dev_issuer_dir=str(issuer.keys),
            dev_issuer_url=ISSUER,
            dev_audience=AUDIENCE,
            auth_leeway_s=0,
        )
        api = ApiSettings(reauth_grace_s=0.0, data_dir=str(tmp_path / "api-data"))
        async with running_server(build_app(api, auth)) as cloud_url:
            settings = _settings(
                tmp_path,
                issuer.url,
                cloud_url=cloud_url,
                backend_url="http://127.0.0.1:9",
                status_interval_s=30.0,
                handshake_timeout_s=5.0,
                reauth_margin_s=1.5,
            )
            path = tmp_path / "state" / CREDENTIALS_FILE
            source, _ = cli.select_token_source(settings, token_flag=None, environ={})
            assert isinstance(source, StoredCredentialsSource)
            bridge = Bridge(settings, source, backoff=Backoff(base_s=0.05, cap_s=0.2, rng=random.Random(3)))
            task = asyncio.create_task(bridge.run())
            try:
                await wait_until(lambda: bridge.active is not None and bridge.active.welcome is not None)
                session = bridge.active
                assert session is not None
                refresh_tokens = {load_credentials(path).refresh_token}  # type: ignore[union-attr]

                def renewed_twice() -> bool:
                    current = load_credentials(path)
                    refresh_tokens.add(current.refresh_token if current else None)
                    return len(refresh_tokens) >= 3

                await wait_until(renewed_twice, timeout=15)
                first_expiry = session.welcome.token_expires_at if session.welcome else 0
                await asyncio.sleep(1.0)  # past the first token's expiry: the session must still be up
                assert time.time() > first_expiry
                assert bridge.active is session and len(bridge.sessions) == 1
                assert session.token == load_credentials(path).access_token  # type: ignore[union-attr]
                code, status = await _bridge_status(cloud_url, session.token)
                assert code == 200 and [b["id"] for b in status["bridges"]] == [bridge.bridge_id]
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
            finally:
                bridge.request_stop()
                assert await asyncio.wait_for(task, 10) == 0


def _credentials(access: str, *, refresh: str | None, ttl: float = 3600, endpoint: str = "") -> Credentials:
    now = time.time()
    return Credentials(
        issuer="http://127.0.0.1:9/i",
        client_id="c",
        audience=AUDIENCE,
        token_endpoint=endpoint or "http://127.0.0.1:9/i/oauth/token",
        access_token=access,
        expires_at=now + ttl,
        obtained_at=now - (3600 - ttl if ttl < 3600 else 0),
        refresh_token=refresh,
    )


async def test_refresh_token_refused_says_log_in_again(make_issuer: IssuerFactory, tmp_path: Path) -> None:
    async with make_issuer() as issuer:
        path = tmp_path / CREDENTIALS_FILE
        save_credentials(
            path, _credentials("old", refresh="never-issued", ttl=-1, endpoint=issuer.url + "/oauth/token")
        )
        source = StoredCredentialsSource(path, cloud_url="https://app.example.com")
        hint = "sign in again with: cloudtolocalllm-bridge login https://app.example.com"
        with pytest.raises(SignInRefused, match=hint):
            await source.fresh()
        with pytest.raises(SignInRefused, match=hint):
            await source.fresh()  # remembered: no second request with a refused token
        assert source.renew_hint() == hint


async def test_issuer_unreachable_keeps_a_valid_token_and_explains_an_expired_one(tmp_path: Path) -> None:
    path = tmp_path / CREDENTIALS_FILE
    save_credentials(path, _credentials("still-valid", refresh="r", ttl=10))  # due: past half its life
    source = StoredCredentialsSource(path)
    assert await source.fresh() == "still-valid"
    save_credentials(path, _credentials("expired", refresh="r", ttl=-1))
    source = StoredCredentialsSource(path)
    with pytest.raises(TokenError, match="cannot renew the login"):
        await source.fresh()


async def test_not_logged_in(tmp_path: Path) -> None:
    source = StoredCredentialsSource(tmp_path / CREDENTIALS_FILE)
    with pytest.raises(TokenError, match=r"not logged in.*cloudtolocalllm-bridge login"):
        source.read()
    with pytest.raises(TokenError, match="not logged in"):
        await source.fresh()


# --- precedence ------------------------------------------------------------------------------------


def test_token_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    save_credentials(tmp_path / "state" / CREDENTIALS_FILE, _credentials("from-login", refresh="r"))
    with_file = BridgeSettings(state_dir=str(tmp_path / "state"), token_file=str(token_file))
    no_file = BridgeSettings(state_dir=str(tmp_path / "state"))
    env = {TOKEN_ENV: "from-env"}

    source, warnings = cli.select_token_source(with_file, token_flag="from-flag", environ=env)
    assert source.read() == "from-flag" and source.describe() == "--token"
    assert any("visible to every user" in w for w in warnings)
    assert any(TOKEN_ENV in w and "--key-file" in w for w in warnings if w.startswith("warning: using"))

    source, warnings = cli.select_token_source(with_file, token_flag=None, environ=env)
    assert source.read() == "from-env" and not source.can_change
    assert warnings == [f"warning: using environment variable {TOKEN_ENV}; ignoring --key-file"]

    source, warnings = cli.select_token_source(with_file, token_flag=None, environ={})
    assert isinstance(source, TokenSource) and source.read() == "from-file" and warnings == []

    source, warnings = cli.select_token_source(with_file, token_flag=None, environ={KEY_ENV: "ctllm_key"})
    assert source.read() == "ctllm_key" and KEY_ENV in source.describe() and not source.can_change
    assert warnings == [f"warning: using environment variable {KEY_ENV}; ignoring --key-file"]
    source, _ = cli.select_token_source(no_file, token_flag=None, environ={KEY_ENV: "ctllm_key", **env})
    assert source.read() == "from-env"

    source, warnings = cli.select_token_source(no_file, token_flag=None, environ={TOKEN_ENV: "  "})
    assert isinstance(source, StoredCredentialsSource) and source.read() == "from-login" and warnings == []
