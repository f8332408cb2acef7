"""The event loop a program runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv, in C) runs the same asyncio code with less CPU per event. core does not depend on it: the
programs that want it do (the bridge; api-backend), and run through
:func:`run` so that they work on either loop. A setting (an environment variable, or a service's own
validated setting) of ``asyncio`` chooses asyncio's loop even where uvloop is installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "run", "running_loop_name"]

T = TypeVar("T")


def loop_name(env_var: str | None = None, *, choice: str | None = None) -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` uses here (``asyncio`` when ``choice``, or else
    ``env_var``, says so)."""
    if choice is None and env_var is not None:
        choice = os.environ.get(env_var)
    if (choice or "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ModuleNotFoundError:
        return "asyncio"
    return "uvloop"


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop running now (call it from a coroutine)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, T], env_var: str | None = None, *, choice: str | None = None) -> T:
    """Run ``main`` to completion on a new event loop: the one :func:`loop_name` names."""
    if loop_name(env_var, choice=choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
