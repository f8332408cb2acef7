"""The OAuth client's HTTP behaviour, which the switch from httpx to aiohttp could have changed: issuers
answering something that is not OAuth, redirects not followed, timeouts, an unreachable issuer, TLS
verification, proxies from the environment, and the ``login`` command's messages for a denied or expired
code (slow_down against the real dev issuer is in test_login)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import ipaddress
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from cloudtolocalllm.bridge import cli
from cloudtolocalllm.bridge.credentials import CREDENTIALS_FILE, StoredCredentialsSource, save_credentials
from cloudtolocalllm.bridge.oauth import (
    IssuerUnreachable,
    OAuthError,
    discover,
    issuer_session,
    refresh_tokens,
    start_device_flow,
)
from cloudtolocalllm.bridge.token import TokenError
from cloudtolocalllm.core.app import ServiceInfo, create_app
from cloudtolocalllm.core.testing import refused_port, running_server, wait_until
from cloudtolocalllm.dev_issuer.device_flow import DevDeviceFlow, dev_issuer_routes
from cloudtolocalllm.dev_issuer.issuer import DevIssuer

from .test_login import AUDIENCE, ISSUER, _credentials

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# --- a scripted issuer (starlette on uvicorn) ---------------------------------------------------------


class Scripted:
    """An issuer whose every endpoint answers what the test put in ``answers`` (path -> Response)."""

    def __init__(self) -> None:
        self.answers: dict[str, Callable[[], Response]] = {}
        self.forms: list[tuple[str, str, dict[str, str]]] = []  # (path, content type, form)
        self.release = asyncio.Event()

    async def endpoint(self, request: Request) -> Response:
        path = request.url.path
        if request.method == "POST":
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            self.forms.append((path, request.headers.get("content-type", ""), form))
        if path.endswith("/slow"):
            await self.release.wait()
        answer = self.answers.get(path)
        return answer() if answer is not None else JSONResponse({"error": "not_found"}, status_code=404)


@asynccontextmanager
async def scripted_issuer() -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted()
    app = create_app(
        ServiceInfo("scripted-issuer", "1"),
        [Route("/{path:path}", scripted.endpoint, methods=["GET", "POST"])],
    )
    async with running_server(app, graceful_timeout_s=1.0) as url:
        try:
            yield scripted, url
        finally:
            scripted.release.set()


def _html(status: int) -> Callable[[], Response]:
    return lambda: Response(f"<html><body>{status}</body></html>", status_code=status, media_type="text/html")


def _json_answer(body: Any, status: int = 200) -> Callable[[], Response]:
    return lambda: JSONResponse(body, status_code=status)


async def test_answers_that_are_not_oauth() -> None:
    async with scripted_issuer() as (scripted, url), issuer_session(5) as http:
        token_url = url + "/i/oauth/token"

        scripted.answers["/i/oauth/token"] = _html(502)
        with pytest.raises(IssuerUnreachable) as info:
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")
        assert str(info.value) == f"the issuer answered HTTP 502 at {token_url} without JSON"

        scripted.answers["/i/oauth/token"] = lambda: Response(b"\xff\xfe\x00{", status_code=200)
        with pytest.raises(IssuerUnreachable, match=r"answered HTTP 200 at .* without JSON"):
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")

        scripted.answers["/i/oauth/token"] = _json_answer(["not", "an", "object"], 200)
        with pytest.raises(IssuerUnreachable, match="without JSON"):
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")

        scripted.answers["/i/oauth/token"] = _json_answer({"message": "overloaded"}, 503)
        with pytest.raises(IssuerUnreachable) as info:
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")
        assert str(info.value) == f"the issuer answered HTTP 503 at {token_url}"

        scripted.answers["/i/oauth/token"] = _json_answer({"error": "invalid_grant", "error_description": "gone"}, 400)
        with pytest.raises(OAuthError) as oauth:
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")
        assert (oauth.value.error, oauth.value.description) == ("invalid_grant", "gone")

        scripted.answers["/i/oauth/token"] = _json_answer({"error": "server_error"}, 200)  # an error with a 200
        with pytest.raises(OAuthError, match=r"^server_error$"):
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")

        scripted.answers["/i/oauth/token"] = _json_answer({"token_type": "Bearer"})
        with pytest.raises(IssuerUnreachable, match="has no access token"):
            await refresh_tokens(http, token_url, client_id="c", refresh_token="r")

        scripted.answers["/i/oauth/token"] = _json_answer({"access_token": "a", "refresh_token": "r2"})
        answer = await refresh_tokens(http, token_url, client_id="c", refresh_token="r1")
        assert (answer.access_token, answer.refresh_token, answer.expires_in) == ("a", "r2", 3600)
    # the refresh is a form POST, as RFC 6749 §6 wants
    path, content_type, form = scripted.forms[-1]
    assert path == "/i/oauth/token" and content_type == "application/x-www-form-urlencoded"
    assert form == {"grant_type": "refresh_token", "refresh_token": "r1", "client_id": "c"}


async def test_discovery_falls_back_to_auth0_paths_and_follows_no_redirect() -> None:
    async with scripted_issuer() as (scripted, url), issuer_session(5) as http:
        endpoints = await discover(http, url + "/a/")  # 404: Auth0's paths
        assert endpoints.token_endpoint == url + "/a/oauth/token"
        assert endpoints.device_authorization_endpoint == url + "/a/oauth/device/code"

        scripted.answers["/b/.well-known/openid-configuration"] = _html(200)  # 200 but not JSON: the same
        assert (await discover(http, url + "/b")).token_endpoint == url + "/b/oauth/token"

        scripted.answers["/c/.well-known/openid-configuration"] = _json_answer(
            {"token_endpoint": url + "/t", "device_authorization_endpoint": url + "/d"}
        )
        endpoints = await discover(http, url + "/c")
        assert (endpoints.token_endpoint, endpoints.device_authorization_endpoint) == (url + "/t", url + "/d")

        scripted.answers["/e/.well-known/openid-configuration"] = _html(500)
        with pytest.raises(IssuerUnreachable, match=r"^the issuer's discovery document answered HTTP 500$"):
            await discover(http, url + "/e")

        scripted.answers["/f/.well-known/openid-configuration"] = lambda: Response(
            status_code=302, headers={"location": url + "/c/.well-known/openid-configuration"}
        )
        with pytest.raises(IssuerUnreachable, match="answered HTTP 302"):
            await discover(http, url + "/f")

        scripted.answers["/g/oauth/device/code"] = _json_answer({"user_code": "ABCD-EFGH"})
        with pytest.raises(IssuerUnreachable, match="missing fields"):
            await start_device_flow(http, await discover(http, url + "/g"), client_id="c", audience="a", scope="s")


async def test_a_silent_issuer_times_out_as_unreachable() -> None:
    async with scripted_issuer() as (_, url), issuer_session(0.3) as http:
        started = time.monotonic()
        with pytest.raises(IssuerUnreachable) as info:
            await refresh_tokens(http, url + "/slow", client_id="c", refresh_token="r")
        elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 3
    assert str(info.value).startswith(f"cannot reach the issuer at {url}/slow: ")


async def test_unreachable_issuer_message_and_the_stored_login_keeps_its_valid_token(tmp_path: Path) -> None:
    with refused_port() as port:
        async with issuer_session(5) as http:
            with pytest.raises(IssuerUnreachable) as info:
                await discover(http, f"http://127.0.0.1:{port}/dev-issuer")
    assert str(info.value).startswith(
        f"cannot reach the issuer at http://127.0.0.1:{port}/dev-issuer/.well-known/openid-configuration: "
    )
    async with scripted_issuer() as (scripted, url):
        scripted.answers["/i/oauth/token"] = _html(502)
        path = tmp_path / CREDENTIALS_FILE
        save_credentials(path, _credentials("expired", refresh="r", ttl=-1, endpoint=url + "/i/oauth/token"))
        with pytest.raises(TokenError, match=r"^cannot renew the login: the issuer answered HTTP 502 at .* JSON"):
            await StoredCredentialsSource(path).fresh()


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


Handler = Callable[[bytes], Awaitable[bytes]]


@asynccontextmanager
async def raw_server(answer: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A bare TCP (or TLS) server: reads one request head, writes whatever ``answer`` makes of it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.write(await answer(await reader.readuntil(b"\r\n\r\n")))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _http_json(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def test_tls_certificates_are_verified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def never(head: bytes) -> bytes:
        raise AssertionError("a request went through an unverified TLS connection")

    with caplog.at_level("CRITICAL", logger="asyncio"):  # the server side's "handshake failed"
        async with raw_server(never, tls=_self_signed(tmp_path)) as address, issuer_session(5) as http:
            with pytest.raises(IssuerUnreachable) as info:
                await discover(http, f"https://{address}/dev-issuer")
    assert f"cannot reach the issuer at https://{address}/dev-issuer/" in str(info.value)
    assert "certificate verify failed" in str(info.value)


async def test_requests_go_through_the_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[bytes] = []
    discovery = b'{"token_endpoint": "http://issuer.invalid/i/t", "device_authorization_endpoint": "http://x/d"}'

    async def proxy(head: bytes) -> bytes:
        heads.append(head)
        return _http_json(discovery)

    async with raw_server(proxy) as address:
        monkeypatch.setenv("HTTP_PROXY", f"http://user:secret@{address}")
        async with issuer_session(5) as http:
            endpoints = await discover(http, "http://issuer.invalid/i")
        assert endpoints.token_endpoint == "http://issuer.invalid/i/t"
        request_line, *headers = heads[0].decode().split("\r\n")
        assert request_line == "GET http://issuer.invalid/i/.well-known/openid-configuration HTTP/1.1"
        assert "host: issuer.invalid" in [h.lower() for h in headers]
        assert "proxy-authorization: basic dxnlcjpzzwnyzxq=" in [h.lower() for h in headers]  # user:secret

        monkeypatch.setenv("NO_PROXY", ".invalid")  # bypassed: straight to issuer.invalid, which has no address
        async with issuer_session(5) as http:
            with pytest.raises(IssuerUnreachable, match=r"cannot reach the issuer at http://issuer\.invalid/i/"):
                await discover(http, "http://issuer.invalid/i")
        assert len(heads) == 1


# --- the `login` command's messages -------------------------------------------------------------------


async def _login_command(argv: list[str]) -> int:
    def run() -> int:
        try:
            cli.main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)
        raise AssertionError("main() returned without SystemExit")

    return await asyncio.to_thread(run)


async def test_login_command_explains_an_expired_or_denied_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_STATE_DIR", str(tmp_path / "state"))
    dev = DevIssuer(tmp_path / "issuer", issuer=ISSUER, audience=AUDIENCE)
    flow = DevDeviceFlow(dev, interval_s=0.2, device_code_ttl_s=1)
    app = create_app(ServiceInfo("dev-issuer", "1"), [Mount("/dev-issuer", routes=dev_issuer_routes(dev, flow))])
    async with running_server(app) as url:
        argv = ["login", "--issuer", url + "/dev-issuer", "--audience", AUDIENCE]
        assert await _login_command(argv) == 1
        captured = capsys.readouterr()
        assert "enter the code" in captured.out
        assert captured.err.strip() == (
            "cloudtolocalllm-bridge: login failed: the code expired before it was approved; run login again"
        )

        flow.device_code_ttl_s = 30
        task = asyncio.create_task(_login_command(argv))
        printed = io.StringIO()

        def code_shown() -> bool:
            printed.write(capsys.readouterr().out)
            return "enter the code" in printed.getvalue()

        await wait_until(code_shown, timeout=10)
        code = re.search(r"enter the code (\S+)", printed.getvalue())
        assert code is not None and flow.deny(code.group(1))
        assert await asyncio.wait_for(task, 10) == 1
        assert capsys.readouterr().err.strip() == "cloudtolocalllm-bridge: login failed: the sign-in was denied"
    assert not (tmp_path / "state" / CREDENTIALS_FILE).exists()
