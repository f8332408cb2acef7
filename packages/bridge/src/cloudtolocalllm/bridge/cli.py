"""``cloudtolocalllm-bridge``: connect a local LLM server to CloudToLocalLLM.

    cloudtolocalllm-bridge login https://app.example.com     sign in; remembers the cloud
    cloudtolocalllm-bridge run                               serve the local Ollama to the cloud
    cloudtolocalllm-bridge connect [--port 11434]            client mode: the cloud on 127.0.0.1:11434
    cloudtolocalllm-bridge status
    cloudtolocalllm-bridge logout
    cloudtolocalllm-bridge --version

``login <cloud>`` reads the cloud's discovery document (``/.well-known/cloudtolocalllm``) for everything else
(issuer, client id, audience, WebSocket URL); the older ``login --issuer ... --audience ...`` still works.
Every ``run`` option can also come from an environment variable (``CLOUDTOLOCALLLM_BRIDGE_<OPTION>``, e.g.
CLOUDTOLOCALLLM_BRIDGE_CLOUD_URL); flags win; the cloud defaults to the one ``login`` stored. The token comes,
first match wins, from ``--token``, CLOUDTOLOCALLLM_TOKEN or CLOUDTOLOCALLLM_BRIDGE_KEY (headless: a bridge
key), ``--key-file``/``--token-file`` (re-read whenever it is needed, so it can be renewed without a
restart), or the stored login (renewed with the refresh token). Exit status (``exits``): 0 after a normal
stop (SIGTERM/SIGINT), 1 when the bridge had to give up (protocol version mismatch, replaced by another
instance), 2 for bad configuration, 3 when the sign-in is over (expired or revoked, its renewal refused, the
key refused): sign in again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from cloudtolocalllm.bridge import event_loop
from cloudtolocalllm.bridge.cloud import (
    CloudConfig,
    CloudUnavailable,
    cloud_origin,
    cloud_origin_or_empty,
    fetch_cloud_config,
    is_plain_http_remote,
    load_cloud_config,
    save_cloud_config,
)
from cloudtolocalllm.bridge.config import (
    ENV_PREFIX,
    BackendKindSetting,
    BridgeSettings,
    ConfigError,
    backend_base_url,
    is_loopback_host,
    tunnel_url,
)
from cloudtolocalllm.bridge.credentials import (
    CREDENTIALS_FILE,
    Credentials,
    StoredCredentialsSource,
    delete_credentials,
    save_credentials,
    token_expiry,
)
from cloudtolocalllm.bridge.exits import EXIT_CONFIG, EXIT_FATAL
from cloudtolocalllm.bridge.state import BridgeStatusFile, StatusSnapshot, pid_alive
from cloudtolocalllm.bridge.token import (
    KEY_ENV,
    TOKEN_ENV,
    TokenError,
    TokenSource,
    account_of,
    fingerprint,
    unverified_expiry,
)
from cloudtolocalllm.bridge.version import __version__
from cloudtolocalllm.core.logging import configure_logging
from cloudtolocalllm.core.process_tuning import tune_process_for_relaying
from cloudtolocalllm.core.settings import SettingsError, load_settings

__all__ = ["PROG", "build_settings", "format_status", "main", "resolve_cloud", "select_token_source"]

PROG = "cloudtolocalllm-bridge"

# CLI flag -> BridgeSettings field, for flags that override a setting.
_OVERRIDES = {
    "cloud": "cloud_url",
    "token_file": "token_file",
    "backend": "backend_url",
    "backend_kind": "backend_kind",
    "name": "name",
    "state_dir": "state_dir",
    "log_level": "log_level",
    "backend_idle_timeout": "backend_idle_timeout_s",
    "status_interval": "status_interval_s",
    "drain_timeout": "drain_timeout_s",
    "issuer": "issuer_url",
    "client_id": "client_id",
    "audience": "audience",
}
DEFAULT_SCOPE = "openid offline_access"
PS_WARNING = (
    "warning: a token on the command line is visible to every user of this machine (ps, /proc) and may "
    f"land in your shell history; prefer {KEY_ENV} or --key-file"
)
NO_CLOUD = (
    "no cloud URL: sign in with `cloudtolocalllm-bridge login https://app.example.com` (it remembers the "
    f"cloud), or pass --cloud URL, or set {ENV_PREFIX}CLOUD_URL"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Connect a local LLM server (Ollama, llama.cpp, LM Studio) to CloudToLocalLLM."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    env = ENV_PREFIX
    run = commands.add_parser("run", help="connect to the cloud and forward requests to the local backend")
    run.add_argument(
        "--cloud", metavar="URL", help=f"the cloud's URL; default: the one `login` stored ({env}CLOUD_URL)"
    )
    run.add_argument(
        "--key-file",
        "--token-file",
        dest="token_file",
        metavar="FILE",
        help=f"file holding a bridge key (or token); headless machines ({env}TOKEN_FILE; or {KEY_ENV})",
    )
    run.add_argument(
        "--token", metavar="TOKEN", help=f"the token itself (visible in ps: prefer {TOKEN_ENV}); beats --token-file"
    )
    run.add_argument(
        "--backend", metavar="URL", help=f"local LLM server; default http://127.0.0.1:11434 ({env}BACKEND_URL)"
    )
    run.add_argument(
        "--backend-kind",
        choices=[kind.value for kind in BackendKindSetting],
        help=f"API the backend speaks; auto probes for it; default ollama ({env}BACKEND_KIND)",
    )
    run.add_argument(
        "--read-only",
        action="store_true",
        default=None,
        help=f"refuse pull, push, create, copy, delete and blob uploads ({env}READ_ONLY)",
    )
    run.add_argument("--name", help=f"name shown in the web app; default the host name ({env}NAME)")
    run.add_argument("--state-dir", metavar="DIR", help=f"where the bridge id and status live ({env}STATE_DIR)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=f"({env}LOG_LEVEL)")
    run.add_argument(
        "--backend-idle-timeout",
        type=float,
        metavar="SECONDS",
        help=f"longest silence from the backend during a request; default 300 ({env}BACKEND_IDLE_TIMEOUT_S)",
    )
    run.add_argument(
        "--status-interval",
        type=float,
        metavar="SECONDS",
        help=f"how often the backend is checked; default 15 ({env}STATUS_INTERVAL_S)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight requests may finish; default 30 ({env}DRAIN_TIMEOUT_S)",
    )
    login = commands.add_parser(
        "login", help="sign in (opens the browser, or prints a URL and code) and remember the cloud"
    )
    login.add_argument(
        "cloud", nargs="?", metavar="CLOUD_URL", help="the cloud's URL, e.g. https://app.example.com: all it needs"
    )
    login.add_argument("--no-browser", action="store_true", help="only print the URL and code to open elsewhere")
    login.add_argument("--issuer", metavar="URL", help=f"override the cloud's OIDC issuer ({env}ISSUER_URL)")
    login.add_argument("--client-id", metavar="ID", help=f"override the cloud's bridge client id ({env}CLIENT_ID)")
    login.add_argument("--audience", metavar="API", help=f"override the cloud's API identifier ({env}AUDIENCE)")
    login.add_argument("--scope", help=f"default: the cloud's, else {DEFAULT_SCOPE!r} (offline_access: renewal)")
    login.add_argument("--state-dir", metavar="DIR", help=f"where the login is stored ({env}STATE_DIR)")
    connect = commands.add_parser(
        "connect", help="client mode: serve the cloud's Ollama API on 127.0.0.1 for tools that take only a URL"
    )
    connect.add_argument("--port", type=int, default=11434, help="port to listen on; default 11434 (0: any free)")
    connect.add_argument("--host", default="127.0.0.1", help="address to listen on; default 127.0.0.1 (loopback)")
    connect.add_argument(
        "--allow-remote-clients",
        action="store_true",
        help="allow a non-loopback --host: anyone who reaches the port uses your account",
    )
    connect.add_argument("--cloud", metavar="URL", help=f"default: the one `login` stored ({env}CLOUD_URL)")
    connect.add_argument(
        "--key-file", "--token-file", dest="token_file", metavar="FILE", help=f"an API key's file (or {KEY_ENV})"
    )
    connect.add_argument("--state-dir", metavar="DIR", help=f"where the login is stored ({env}STATE_DIR)")
    connect.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=f"({env}LOG_LEVEL)")
    logout = commands.add_parser("logout", help="delete the stored login")
    logout.add_argument("--state-dir", metavar="DIR", help=f"the bridge's state dir ({env}STATE_DIR)")
    status = commands.add_parser("status", help="print the running bridge's connection and backend state")
    status.add_argument("--state-dir", metavar="DIR", help=f"the bridge's state dir ({env}STATE_DIR)")
    status.add_argument("--json", action="store_true", help="print the raw status document")
    return parser


def build_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> BridgeSettings:
    """Settings from the environment, overridden by the flags given. Raises SettingsError/ConfigError."""
    settings = load_settings(BridgeSettings, prefix=ENV_PREFIX, environ=environ)
    overrides: dict[str, Any] = {
        field: getattr(args, flag) for flag, field in _OVERRIDES.items() if getattr(args, flag, None) is not None
    }
    if getattr(args, "read_only", None):
        overrides["read_only"] = True
    if not overrides:
        return settings
    merged = {**msgspec.structs.asdict(settings), **overrides}
    try:
        return msgspec.convert(merged, BridgeSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid option: {exc}") from None


def credentials_path(settings: BridgeSettings) -> Path:
    return settings.state_path() / CREDENTIALS_FILE


def resolve_cloud(settings: BridgeSettings) -> tuple[BridgeSettings, CloudConfig | None]:
    """The cloud to use: ``--cloud``/CLOUD_URL when given, else the one ``login`` stored (its WebSocket URL).
    ConfigError when there is neither."""
    stored = load_cloud_config(settings.state_path())
    if settings.cloud_url:
        if stored is not None and cloud_origin_or_empty(settings.cloud_url) != stored.cloud_url:
            stored = None  # another cloud than the stored one: its discovery values do not apply
        return settings, stored
    if stored is None:
        raise ConfigError(NO_CLOUD)
    return msgspec.structs.replace(settings, cloud_url=stored.websocket_url), stored


def select_token_source(
    settings: BridgeSettings, *, token_flag: str | None, environ: dict[str, str] | None = None
) -> tuple[TokenSource, list[str]]:
    """Where ``run`` and ``connect`` get their token, first match wins: ``--token``, CLOUDTOLOCALLLM_TOKEN,
    CLOUDTOLOCALLLM_BRIDGE_KEY, the key/token file, the stored login. Returns the source and warnings to
    print (a token on argv; sources ignored)."""
    environ = dict(os.environ) if environ is None else environ
    env_name, env_token = next(
        ((name, value.strip()) for name in (TOKEN_ENV, KEY_ENV) if (value := environ.get(name) or "").strip()),
        (TOKEN_ENV, None),
    )
    token_file = Path(settings.token_file).expanduser() if settings.token_file else None
    warnings: list[str] = []
    source: TokenSource
    if token_flag:
        warnings.append(PS_WARNING)
        source = TokenSource(env_token=token_flag, label="--token")
        ignored = [name for name, on in ((env_name, env_token), ("--key-file", token_file)) if on]
    elif env_token:
        source = TokenSource(env_token=env_token, label=f"environment variable {env_name}")
        ignored = ["--key-file"] if token_file else []
    elif token_file is not None:
        return TokenSource(token_file=token_file), warnings
    else:
        cloud = cloud_origin_or_empty(settings.cloud_url)
        path = credentials_path(settings)
        return StoredCredentialsSource(path, margin_s=settings.reauth_margin_s, cloud_url=cloud), warnings
    if ignored:
        warnings.append(f"warning: using {source.describe()}; ignoring {' and '.join(ignored)}")
    return source, warnings


def _configure(args: argparse.Namespace) -> tuple[BridgeSettings, TokenSource, list[str]]:
    settings, _ = resolve_cloud(build_settings(args))
    tunnel_url(settings.cloud_url)
    backend_base_url(settings.backend_url)
    source, warnings = select_token_source(settings, token_flag=getattr(args, "token", None))
    source.read()  # fail now, with a clear message, if there is no usable token at all
    return settings, source, warnings


async def _run_bridge(settings: BridgeSettings, source: TokenSource) -> tuple[int, str | None]:
    from cloudtolocalllm.bridge.runner import Bridge

    bridge = Bridge(settings, source)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, bridge.request_stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(bridge.request_stop))
    code = await bridge.run()
    return code, bridge.exit_message


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        settings, source, warnings = _configure(args)
    except (SettingsError, ConfigError, TokenError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings:
        print(f"{PROG}: {warning}", file=sys.stderr)
    configure_logging(PROG, __version__, level=settings.log_level.upper(), stream=sys.stderr)
    if source.world_readable:
        print(f"{PROG}: warning: {source.describe()} is readable by other users (chmod 600 it)", file=sys.stderr)
    tune_process_for_relaying()  # fewer collector stalls and page faults in the middle of relayed streams
    code, message = event_loop.run(_run_bridge(settings, source), settings.event_loop)
    if message:
        print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def format_status(snap: StatusSnapshot, *, running: bool, now: float | None = None) -> str:
    """The human-readable ``status`` output."""
    now = time.time() if now is None else now
    lines = []
    process = f"running (pid {snap.pid})" if running else f"not running (last update {_ago(now - snap.updated_at)})"
    lines.append(f"bridge:     {snap.name or '?'} ({snap.bridge_id}), version {snap.software_version}, {process}")
    if running and snap.state == "connected":
        cloud = f"connected to {snap.cloud_url} since {_ago(now - snap.since)}, session {snap.session_id}"
    elif running:
        cloud = f"{snap.state} ({snap.cloud_url}) since {_ago(now - snap.since)}"
    else:
        cloud = f"disconnected (was {snap.state}, {snap.cloud_url})"
    lines.append(f"cloud:      {cloud}")
    reach = "reachable" if snap.backend_reachable else "NOT reachable"
    models = ", ".join(snap.models[:10]) + (f" and {len(snap.models) - 10} more" if len(snap.models) > 10 else "")
    backend = f"{snap.backend_url} ({snap.backend_kind or '?'}): {reach}"
    if snap.backend_reachable:
        backend += f", {len(snap.models)} model(s)" + (f": {models}" if models else "")
    lines.append(f"backend:    {backend}")
    lines.append(f"streams:    {snap.streams_in_flight if running else 0} in flight")
    lines.append(f"mode:       {'read-only' if snap.read_only else 'read-write'}")
    if snap.last_error:
        lines.append(f"last error: {snap.last_error}")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
    except (SettingsError, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    state_dir = settings.state_path()
    snap = BridgeStatusFile.read(state_dir)
    if snap is None:
        print(f"{PROG}: no status in {state_dir}: the bridge has not run with this state dir", file=sys.stderr)
        return EXIT_FATAL
    running = snap.state != "stopped" and pid_alive(snap.pid)
    if args.json:
        document = msgspec.structs.asdict(snap) | {"running": running}
        print(msgspec.json.format(msgspec.json.encode(document)).decode())
    else:
        print(format_status(snap, running=running))
    return 0 if running and snap.state == "connected" else EXIT_FATAL


# --- login / logout ---------------------------------------------------------------------------------


async def login(
    settings: BridgeSettings,
    *,
    scope: str = DEFAULT_SCOPE,
    out: Any = None,
    timeout_s: float = 15.0,
    open_browser: Callable[[str], bool] | None = None,
) -> Credentials:
    """The device flow: say where to approve (and open the browser when ``open_browser`` can), poll until
    approved, store the credentials (0600)."""
    from cloudtolocalllm.bridge.oauth import discover, issuer_session, poll_for_token, start_device_flow

    out = out or sys.stdout
    if not settings.issuer_url:
        raise ConfigError(
            "no issuer: give the cloud's URL (`cloudtolocalllm-bridge login https://app.example.com`), or pass "
            f"--issuer https://<AUTH0_DOMAIN>/ and --audience, or set {ENV_PREFIX}ISSUER_URL"
        )
    if not settings.audience:
        raise ConfigError(
            "no audience: give the cloud's URL, or pass --audience with the API identifier the cloud verifies "
            f"tokens for (AUTH0_AUDIENCE on the server; cloudtolocalllm-dev for the dev issuer) or set "
            f"{ENV_PREFIX}AUDIENCE"
        )
    async with issuer_session(timeout_s) as http:
        endpoints = await discover(http, settings.issuer_url)
        authorization = await start_device_flow(
            http, endpoints, client_id=settings.client_id, audience=settings.audience, scope=scope
        )
        print(f"To sign in, open {authorization.verification_uri}", file=out)
        print(f"and enter the code {authorization.user_code}", file=out)
        complete = authorization.verification_uri_complete
        if complete:
            print(f"(or open {complete})", file=out)
        if complete and open_browser is not None and open_browser(complete):
            print("Opened your browser: check that it shows the same code, then approve.", file=out)
        print(f"Waiting for approval (the code expires in {authorization.expires_in / 60:.0f} min)...", file=out)
        out.flush()
        answer = await poll_for_token(
            http,
            endpoints,
            authorization,
            client_id=settings.client_id,
            on_slow_down=lambda s: print(f"(the issuer asked to poll less often: every {s:g} s)", file=out),
        )
    now = time.time()
    credentials = Credentials(
        issuer=settings.issuer_url,
        client_id=settings.client_id,
        audience=settings.audience,
        token_endpoint=endpoints.token_endpoint,
        access_token=answer.access_token,
        expires_at=token_expiry(answer.access_token, now + answer.expires_in),
        obtained_at=now,
        refresh_token=answer.refresh_token,
        scope=answer.scope,
    )
    save_credentials(credentials_path(settings), credentials)
    return credentials


def open_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser if this session has one; never fails, never blocks the terminal.

    On Linux without DISPLAY/WAYLAND_DISPLAY (SSH, servers, containers) nothing is opened: Python's
    webbrowser would fall back to a text browser (lynx, w3m) in this very terminal.
    """
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return bool(webbrowser.open(url, new=2))
    except Exception:
        return False


def _login_settings(args: argparse.Namespace) -> tuple[BridgeSettings, CloudConfig | None, str]:
    """The settings for ``login``: the cloud's discovery document first, flags over it."""
    settings = build_settings(args)
    if not args.cloud:
        return settings, None, args.scope or DEFAULT_SCOPE
    cloud = asyncio.run(fetch_cloud_config(args.cloud))
    if is_plain_http_remote(cloud.cloud_url):
        print(f"{PROG}: warning: {cloud.cloud_url} is not encrypted (http://): use https://", file=sys.stderr)
    # Flags and variables (already in ``settings``) win over the document; client_id has a default, so only
    # a flag or its variable counts as an override.
    settings = msgspec.structs.replace(
        settings,
        issuer_url=settings.issuer_url or cloud.issuer,
        client_id=args.client_id or os.environ.get(f"{ENV_PREFIX}CLIENT_ID") or cloud.client_id,
        audience=settings.audience or cloud.audience,
    )
    return settings, cloud, args.scope or cloud.scope


def _cmd_login(args: argparse.Namespace) -> int:
    from cloudtolocalllm.bridge.oauth import IssuerUnreachable, OAuthError

    try:
        settings, cloud, scope = _login_settings(args)
        browser = None if args.no_browser else open_browser
        credentials = asyncio.run(login(settings, scope=scope, open_browser=browser))
    except (SettingsError, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CloudUnavailable as exc:
        print(f"{PROG}: login failed: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OAuthError as exc:
        reasons = {
            "access_denied": "the sign-in was denied",
            "expired_token": "the code expired before it was approved; run login again",
        }
        print(f"{PROG}: login failed: {reasons.get(exc.error, str(exc))}", file=sys.stderr)
        return EXIT_FATAL
    except IssuerUnreachable as exc:
        print(f"{PROG}: login failed: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print(f"{PROG}: login cancelled", file=sys.stderr)
        return EXIT_FATAL
    path = credentials_path(settings)
    if cloud is not None:
        save_cloud_config(settings.state_path(), cloud)
        print(f"Signed in to {cloud.cloud_url} as {account_of(credentials.access_token)}; saved in {path.parent}")
        print(f"Next: `{PROG} run` serves your local Ollama; `{PROG} connect` serves the cloud on 127.0.0.1:11434")
    else:
        print(f"Signed in (token {fingerprint(credentials.access_token)}); credentials saved to {path}")
    if credentials.refresh_token is None:
        print(
            f"{PROG}: warning: the issuer sent no refresh token (offline_access not granted): the bridge cannot "
            "renew the login and you will have to log in again when the access token expires",
            file=sys.stderr,
        )
    if unverified_expiry(credentials.access_token) is None:
        print(
            f"{PROG}: warning: the access token is not a JWT; the cloud will refuse it. Check --audience "
            "(Auth0 issues an opaque token when the audience is missing or unknown)",
            file=sys.stderr,
        )
    return 0


async def _serve_client_mode(
    args: argparse.Namespace, settings: BridgeSettings, cloud: CloudConfig | None, source: TokenSource
) -> tuple[int, str | None]:
    from cloudtolocalllm.bridge.connect import ClientMode

    origin = cloud_origin(settings.cloud_url)
    api_base = cloud.api_base if cloud is not None else origin + "/api/ollama"
    mode = ClientMode(api_base, source, cloud_url=origin, allow_remote_clients=args.allow_remote_clients)
    try:
        host, port = await mode.start(args.host, args.port)
    except OSError as exc:
        await mode.aclose()
        hint = " (is Ollama running here? pass another --port)" if args.port == 11434 else ""
        return EXIT_FATAL, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}{hint}"
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, mode.stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(mode.stop))
    shown = f"[{host}]" if ":" in host else host
    account = account_of(source.read())
    print(f"Serving {origin} (as {account}) at http://{shown}:{port}", flush=True)
    print(f"Use it as an Ollama server: OLLAMA_HOST={shown}:{port} ollama list", flush=True)
    try:
        code = await mode.wait()
    finally:
        await mode.aclose()
    return code, mode.exit_message


def _cmd_connect(args: argparse.Namespace) -> int:
    try:
        if not args.allow_remote_clients and not is_loopback_host(args.host):
            raise ConfigError(
                f"--host {args.host} is not a loopback address: anyone who reaches it would use your account. "
                "Pass --allow-remote-clients if that is what you want"
            )
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port {args.port}: expected 0-65535")
        settings, cloud = resolve_cloud(build_settings(args))
        source, warnings = select_token_source(settings, token_flag=None)
        source.read()
    except (SettingsError, ConfigError, TokenError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings:
        print(f"{PROG}: {warning}", file=sys.stderr)
    if args.allow_remote_clients and not is_loopback_host(args.host):
        print(f"{PROG}: warning: listening on {args.host}: anyone who reaches it uses your account", file=sys.stderr)
    configure_logging(PROG, __version__, level=settings.log_level.upper(), stream=sys.stderr)
    code, message = event_loop.run(_serve_client_mode(args, settings, cloud, source), settings.event_loop)
    if message:
        print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _cmd_logout(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
    except (SettingsError, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    path = credentials_path(settings)
    if delete_credentials(path):
        print(f"Logged out: deleted {path}")
    else:
        print(f"Not logged in (no {path})")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    handlers = {
        "run": _cmd_run,
        "login": _cmd_login,
        "logout": _cmd_logout,
        "status": _cmd_status,
        "connect": _cmd_connect,
    }
    raise SystemExit(handlers[args.command](args))


if __name__ == "__main__":  # pragma: no cover
    main()
