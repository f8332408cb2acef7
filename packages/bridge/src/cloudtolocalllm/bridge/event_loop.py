"""The bridge's event loop: uvloop where it is installed, else asyncio's own.

uvloop (libuv, in C) runs the same asyncio code with less CPU per event: relaying a one-chunk chat cost the
bridge about 10 % less CPU on it (docs/performance.md). It is a dependency on Linux and macOS (there is no
Windows build), so the bridge starts through :func:`run` and works on either loop.
The ``event_loop`` setting (``CLOUDTOLOCALLLM_BRIDGE_EVENT_LOOP``, validated with the others) set to
``asyncio`` chooses asyncio's loop even where uvloop is installed, to rule it out when troubleshooting.

api-backend runs on uvloop too (``API_EVENT_LOOP``, the same fallback).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from cloudtolocalllm.core import event_loop

__all__ = ["loop_name", "run"]

T = TypeVar("T")


def loop_name(choice: Literal["uvloop", "asyncio"] = "uvloop") -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` uses here for the ``event_loop`` setting ``choice``."""
    return event_loop.loop_name(choice=choice)


def run(main: Coroutine[Any, Any, T], choice: Literal["uvloop", "asyncio"] = "uvloop") -> T:
    """Run ``main`` to completion on a new event loop (see the module's docstring for which one)."""
    return event_loop.run(main, choice=choice)
