"""core.event_loop: uvloop where it is installed, asyncio's loop when asked for or when it is not."""

from __future__ import annotations

import sys
import types

import pytest

from cloudtolocalllm.core import event_loop


async def _running_loop() -> str:
    return event_loop.running_loop_name()


def test_the_variable_set_to_asyncio_gets_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_EVENT_LOOP", " AsyncIO ")
    assert event_loop.loop_name("SOME_EVENT_LOOP") == "asyncio"
    assert event_loop.run(_running_loop(), "SOME_EVENT_LOOP") == "asyncio"


def test_without_uvloop_asyncios_loop_runs_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows, or where nothing installed it
    assert event_loop.loop_name() == "asyncio"
    assert event_loop.run(_running_loop()) == "asyncio"


def test_a_services_own_setting_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_EVENT_LOOP", "uvloop")
    assert event_loop.loop_name("SOME_EVENT_LOOP", choice="asyncio") == "asyncio"
    assert event_loop.run(_running_loop(), "SOME_EVENT_LOOP", choice="asyncio") == "asyncio"
    monkeypatch.setenv("SOME_EVENT_LOOP", "asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", types.ModuleType("uvloop"))  # core does not depend on it
    assert event_loop.loop_name("SOME_EVENT_LOOP", choice="uvloop") == "uvloop"
