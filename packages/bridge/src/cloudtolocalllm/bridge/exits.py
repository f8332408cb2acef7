"""The bridge's exit statuses (``run``, ``connect``, ``login``), documented in docs/bridge.md.

3 is the one a service manager must not restart on: only the user can sign in again (the systemd unit
lists it, with 2, in ``RestartPreventExitStatus``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_CONFIG", "EXIT_FATAL", "EXIT_OK", "EXIT_SIGN_IN"]

EXIT_OK: Final = 0
"""A normal stop (SIGTERM/SIGINT), or a command that did what it was asked."""
EXIT_FATAL: Final = 1
"""Gave up: protocol version mismatch, replaced by another instance, login failed, nothing to report."""
EXIT_CONFIG: Final = 2
"""Bad configuration: a setting or flag the bridge cannot use (the message names it)."""
EXIT_SIGN_IN: Final = 3
"""The sign-in is over: expired or revoked, its renewal refused, or the key refused. Sign in again."""
