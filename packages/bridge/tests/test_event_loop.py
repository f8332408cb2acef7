"""The bridge's event loop: uvloop where it is installed, asyncio's when asked for (or on Windows)."""

from __future__ import annotations

import sys

import pytest

from cloudtolocalllm.bridge import event_loop
from cloudtolocalllm.bridge.config import ENV_PREFIX, BridgeSettings
from cloudtolocalllm.core import event_loop as core_event_loop
from cloudtolocalllm.core.settings import SettingsError, load_settings


async def _running_loop() -> str:
    return core_event_loop.running_loop_name()


@pytest.mark.skipif(sys.platform == "win32", reason="other platform: uvloop has no Windows build")
def test_uvloop_runs_the_program_where_it_is_installed() -> None:
    assert event_loop.loop_name() == "uvloop"  # the bridge depends on it on this platform
    assert event_loop.run(_running_loop()) == "uvloop"


def test_asking_for_asyncio_gets_asyncios_loop() -> None:
    assert event_loop.loop_name("asyncio") == "asyncio"
    assert event_loop.run(_running_loop(), "asyncio") == "asyncio"


def test_the_setting_is_validated_naming_its_choices() -> None:
    settings = load_settings(BridgeSettings, prefix=ENV_PREFIX, environ={f"{ENV_PREFIX}EVENT_LOOP": "asyncio"})
    assert settings.event_loop == "asyncio"
    assert load_settings(BridgeSettings, prefix=ENV_PREFIX, environ={}).event_loop == "uvloop"
    with pytest.raises(SettingsError) as raised:
        load_settings(BridgeSettings, prefix=ENV_PREFIX, environ={f"{ENV_PREFIX}EVENT_LOOP": "uv-loop"})
    assert raised.value.problems == {f"{ENV_PREFIX}EVENT_LOOP": "expected one of uvloop, asyncio (got 'uv-loop')"}


def test_without_uvloop_asyncios_loop_runs_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows: the import fails
    assert event_loop.loop_name() == "asyncio"
    assert event_loop.run(_running_loop()) == "asyncio"
