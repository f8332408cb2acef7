"""``cloudtolocalllm-bridge``: connect a local LLM server to CloudToLocalLLM.

    cloudtolocalllm-bridge login --issuer https://tenant.auth0.com/ --client-id ID --audience API
    cloudtolocalllm-bridge run --cloud https://app.example.com
    cloudtolocalllm-bridge status
    cloudtolocalllm-bridge logout
    cloudtolocalllm-bridge --version

Every ``run`` option can also come from an environment variable (``CLOUDTOLOCALLLM_BRIDGE_<OPTION>``, e.g.
CLOUDTOLOCALLLM_BRIDGE_CLOUD_URL); flags win. The token comes, first match wins, from ``--token`` or
CLOUDTOLOCALLLM_TOKEN (headless), ``--token-file`` (re-read whenever it is needed, so it can be renewed
without a restart), or the credentials ``login`` stored (renewed with the refresh token). Exit status: 0 after a
normal stop (SIGTERM/SIGINT), 1 when the bridge had to give up (protocol version mismatch, token refused
with no way to renew it, replaced by another instance), 2 for bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from cloudtolocalllm.bridge.config import (
    ENV_PREFIX,
    BackendKindSetting,
    BridgeSettings,
    ConfigError,
    backend_base_url,
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
from cloudtolocalllm.bridge.state import BridgeStatusFile, StatusSnapshot, pid_alive
from cloudtolocalllm.bridge.token import TOKEN_ENV, TokenError, TokenSource, fingerprint, unverified_expiry
from cloudtolocalllm.bridge.version import __version__
from cloudtolocalllm.core.gc_tuning import tune_gc_for_latency
from cloudtolocalllm.core.logging import configure_logging
from cloudtolocalllm.core.settings import SettingsError, load_settings

__all__ = ["PROG", "build_settings", "format_status", "main", "select_token_source"]

PROG = "cloudtolocalllm-bridge"
EXIT_CONFIG = 2

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
    f"land in your shell history; prefer {TOKEN_ENV} or --token-file"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Connect a local LLM server (Ollama, llama.cpp, LM Studio) to CloudToLocalLLM."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    env = ENV_PREFIX
    run = commands.add_parser("run", help="connect to the cloud and forward requests to the local backend")
    run.add_argument("--cloud", metavar="URL", help=f"the cloud's URL, e.g. https://app.example.com ({env}CLOUD_URL)")
    run.add_argument(
        "--token-file", metavar="FILE", help=f"file holding the bridge token ({env}TOKEN_FILE; or {TOKEN_ENV})"
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
    login = commands.add_parser("login", help="sign in with the device flow and store a refresh token")
    login.add_argument("--issuer", metavar="URL", help=f"https://<AUTH0_DOMAIN>/ or the dev issuer ({env}ISSUER_URL)")
    login.add_argument(
        "--client-id", metavar="ID", help=f"OAuth client id; default cloudtolocalllm-bridge ({env}CLIENT_ID)"
    )
    login.add_argument("--audience", metavar="API", help=f"the API identifier the cloud verifies ({env}AUDIENCE)")
    login.add_argument("--scope", default=DEFAULT_SCOPE, help=f"default {DEFAULT_SCOPE!r} (offline_access: refresh)")
    login.add_argument("--state-dir", metavar="DIR", help=f"where credentials.json is written ({env}STATE_DIR)")
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


def select_token_source(
    settings: BridgeSettings, *, token_flag: str | None, environ: dict[str, str] | None = None
) -> tuple[TokenSource, list[str]]:
    """Where ``run`` gets its token, first match wins: ``--token``, CLOUDTOLOCALLLM_TOKEN, the token file,
    the stored login. Returns the source and warnings to print (a token on argv; sources ignored)."""
    environ = dict(os.environ) if environ is None else environ
    env_token = (environ.get(TOKEN_ENV) or "").strip() or None
    token_file = Path(settings.token_file).expanduser() if settings.token_file else None
    warnings: list[str] = []
    source: TokenSource
    if token_flag:
        warnings.append(PS_WARNING)
        source = TokenSource(env_token=token_flag, label="--token")
        ignored = [name for name, on in ((TOKEN_ENV, env_token), ("--token-file", token_file)) if on]
    elif env_token:
        source = TokenSource(env_token=env_token)
        ignored = ["--token-file"] if token_file else []
    elif token_file is not None:
        return TokenSource(token_file=token_file), warnings
    else:
        return StoredCredentialsSource(credentials_path(settings), margin_s=settings.reauth_margin_s), warnings
    if ignored:
        warnings.append(f"warning: using {source.describe()}; ignoring {' and '.join(ignored)}")
    return source, warnings


def _configure(args: argparse.Namespace) -> tuple[BridgeSettings, TokenSource, list[str]]:
    settings = build_settings(args)
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
    tune_gc_for_latency()  # fewer collector stalls in the middle of relayed streams
    code, message = asyncio.run(_run_bridge(settings, source))
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
        return 1
    running = snap.state != "stopped" and pid_alive(snap.pid)
    if args.json:
        document = msgspec.structs.asdict(snap) | {"running": running}
        print(msgspec.json.format(msgspec.json.encode(document)).decode())
    else:
        print(format_status(snap, running=running))
    return 0 if running and snap.state == "connected" else 1


# --- login / logout ---------------------------------------------------------------------------------


async def login(
    settings: BridgeSettings, *, scope: str = DEFAULT_SCOPE, out: Any = None, timeout_s: float = 15.0
) -> Credentials:
    """The device flow: print where to approve, poll until approved, store the credentials (0600)."""
    from cloudtolocalllm.bridge.oauth import discover, issuer_session, poll_for_token, start_device_flow

    out = out or sys.stdout
    if not settings.issuer_url:
        raise ConfigError(
            "no issuer: pass --issuer https://<AUTH0_DOMAIN>/ (in development the dev issuer's URL, e.g. "
            f"http://localhost:8080/dev-issuer) or set {ENV_PREFIX}ISSUER_URL"
        )
    if not settings.audience:
        raise ConfigError(
            "no audience: pass --audience with the API identifier the cloud verifies tokens for "
            f"(AUTH0_AUDIENCE on the server; cloudtolocalllm-dev for the dev issuer) or set {ENV_PREFIX}AUDIENCE"
        )
    async with issuer_session(timeout_s) as http:
        endpoints = await discover(http, settings.issuer_url)
        authorization = await start_device_flow(
            http, endpoints, client_id=settings.client_id, audience=settings.audience, scope=scope
        )
        print(f"To sign in, open {authorization.verification_uri}", file=out)
        print(f"and enter the code {authorization.user_code}", file=out)
        if authorization.verification_uri_complete:
            print(f"(or open {authorization.verification_uri_complete})", file=out)
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


def _cmd_login(args: argparse.Namespace) -> int:
    from cloudtolocalllm.bridge.oauth import IssuerUnreachable, OAuthError

    try:
        settings = build_settings(args)
        credentials = asyncio.run(login(settings, scope=args.scope))
    except (SettingsError, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OAuthError as exc:
        reasons = {
            "access_denied": "the sign-in was denied",
            "expired_token": "the code expired before it was approved; run login again",
        }
        print(f"{PROG}: login failed: {reasons.get(exc.error, str(exc))}", file=sys.stderr)
        return 1
    except IssuerUnreachable as exc:
        print(f"{PROG}: login failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: login cancelled", file=sys.stderr)
        return 1
    path = credentials_path(settings)
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
    handlers = {"run": _cmd_run, "login": _cmd_login, "logout": _cmd_logout, "status": _cmd_status}
    raise SystemExit(handlers[args.command](args))


if __name__ == "__main__":  # pragma: no cover
    main()
