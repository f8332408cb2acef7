"""Settings from the environment (``STATIC_*``), with one error naming every bad variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

from cloudtolocalllm.core import SettingsError, load_settings
from cloudtolocalllm.core.app import DEFAULT_CSP

__all__ = ["PREFIX", "Settings", "load"]

PREFIX: Final = "STATIC_"


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    root: str
    """``STATIC_ROOT`` (required): the directory to serve."""
    host: str = "127.0.0.1"
    """``STATIC_HOST``: address to bind; a container sets ``0.0.0.0``."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    """``STATIC_PORT``."""
    spa: bool = False
    """``STATIC_SPA``: serve ``index.html`` for extension-less app routes that are not files."""
    csp: str = DEFAULT_CSP
    """``STATIC_CSP``: the Content-Security-Policy header (core's strict default; empty sends none)."""
    max_age: Annotated[int, msgspec.Meta(ge=0)] = 300
    """``STATIC_MAX_AGE``: seconds of cache for files that are neither hashed nor revalidated."""
    service_name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "static-site"
    """``STATIC_SERVICE_NAME``: the name in /health and logs (``flutter-app`` for the app container)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """``STATIC_LOG_LEVEL``."""
    graceful_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """``STATIC_GRACEFUL_TIMEOUT_S``: how long SIGTERM waits for downloads in flight."""


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings; the check that ``STATIC_ROOT`` is a directory joins the type errors."""
    env = os.environ if environ is None else environ
    problems: dict[str, str] = {}
    settings: Settings | None = None
    try:
        settings = load_settings(Settings, prefix=PREFIX, environ=env)
    except SettingsError as exc:
        problems.update(exc.problems)
    root = env.get(f"{PREFIX}ROOT")
    if root and not os.path.isdir(root):
        problems[f"{PREFIX}ROOT"] = f"not a directory (got {root!r})"
    if problems or settings is None:
        raise SettingsError(problems)
    return settings
