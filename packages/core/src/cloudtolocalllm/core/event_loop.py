"""The event loop a program runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv, in C) runs the same asyncio code with less CPU per event. core does not depend on it: the
programs that want it do (the bridge), and run through :func:`run` so that they work on either loop. An
environment variable set to ``asyncio`` chooses asyncio's loop even where uvloop is installed, to rule it out
when troubleshooting.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "run"]

T = TypeVar("T")


def loop_name(env_var: str | None = None) -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` uses here (``asyncio`` when ``env_var`` says so)."""
    if env_var is not None and os.environ.get(env_var, "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ModuleNotFoundError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], env_var: str | None = None) -> T:
    """Run ``main`` to completion on a new event loop: the one :func:`loop_name` names."""
    if loop_name(env_var) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
