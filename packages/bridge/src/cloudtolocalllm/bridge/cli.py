"""``cloudtolocalllm-bridge``: connect a local LLM server to CloudToLocalLLM.

    cloudtolocalllm-bridge run --cloud https://app.example.com --token-file ~/.config/cloudtolocalllm/token
    cloudtolocalllm-bridge status
    cloudtolocalllm-bridge --version

Every ``run`` option can also come from an environment variable (``CLOUDTOLOCALLLM_BRIDGE_<OPTION>``, e.g.
CLOUDTOLOCALLLM_BRIDGE_CLOUD_URL); flags win. The token comes from ``--token-file`` (re-read whenever it is
needed, so it can be renewed without a restart) or from CLOUDTOLOCALLLM_TOKEN. Exit status: 0 after a
normal stop (SIGTERM/SIGINT), 1 when the bridge had to give up (protocol version mismatch, token refused
with no way to renew it, replaced by another instance), 2 for bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
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
from cloudtolocalllm.bridge.state import BridgeStatusFile, StatusSnapshot, pid_alive
from cloudtolocalllm.bridge.token import TOKEN_ENV, TokenError, TokenSource
from cloudtolocalllm.bridge.version import __version__
from cloudtolocalllm.core.logging import configure_logging
from cloudtolocalllm.core.settings import SettingsError, load_settings

__all__ = ["PROG", "build_settings", "format_status", "main"]

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
}


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


def _configure(args: argparse.Namespace) -> tuple[BridgeSettings, TokenSource]:
    settings = build_settings(args)
    tunnel_url(settings.cloud_url)
    backend_base_url(settings.backend_url)
    token_file = Path(settings.token_file).expanduser() if settings.token_file else None
    source = TokenSource.from_environment(token_file)
    source.read()  # fail now, with a clear message, if there is no usable token at all
    return settings, source


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
        settings, source = _configure(args)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConfigError, TokenError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(PROG, __version__, level=settings.log_level.upper(), stream=sys.stderr)
    if source.world_readable:
        print(f"{PROG}: warning: {source.describe()} is readable by other users (chmod 600 it)", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    handler = _cmd_run if args.command == "run" else _cmd_status
    raise SystemExit(handler(args))


if __name__ == "__main__":  # pragma: no cover
    main()
