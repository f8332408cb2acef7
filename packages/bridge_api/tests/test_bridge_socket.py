"""The bridge WebSocket: handshake, heartbeats, reauth, protocol errors, replacement and draining."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.devkit.peers import FakeBridge
from cloudtolocalllm.protocol import PROTOCOL_VERSION, CloseCode

from .conftest import Cloud, CloudFactory


async def test_handshake_returns_welcome_with_limits_and_token_expiry(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token()) as bridge:
        welcome = bridge.welcome
        assert welcome is not None
        assert welcome.version == PROTOCOL_VERSION
        assert welcome.heartbeat_interval_s == 20.0
        assert welcome.limits.max_concurrent_streams == 64
        assert welcome.token_expires_at is not None and welcome.token_expires_at > time.time()


async def test_incompatible_version_is_closed_with_an_upgrade_reason(cloud: Cloud) -> None:
    bridge = FakeBridge(cloud.url, cloud.token(), version=PROTOCOL_VERSION + 1)
    await bridge.connect()
    await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.VERSION_INCOMPATIBLE
    assert f"v{PROTOCOL_VERSION + 1}" in bridge.close_reason


async def test_garbage_after_handshake_closes_with_protocol_violation(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token()) as bridge:
        await bridge.send_raw(b"\xc1\xff not msgpack")
        await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.PROTOCOL_VIOLATION
    await wait_until(lambda: not cloud.app.state.registry.all_sessions())


async def test_text_message_instead_of_hello_is_refused(cloud: Cloud) -> None:
    url = cloud.url.replace("http", "ws") + "/ws/bridge"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {cloud.token()}"}) as ws:
        await ws.send("hello?")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.PROTOCOL_VIOLATION


async def test_silent_bridge_is_dropped_after_the_heartbeat_timeout(make_cloud: CloudFactory) -> None:
    async with make_cloud(heartbeat_interval_s=0.1, heartbeat_timeout_s=0.4) as cloud:
        bridge = FakeBridge(cloud.url, cloud.token(), answer_pings=False)
        await bridge.connect()
        await asyncio.wait_for(bridge.closed.wait(), 5)
        assert bridge.close_code == CloseCode.HEARTBEAT_TIMEOUT
        await wait_until(lambda: not cloud.app.state.registry.all_sessions())


# Heartbeats every 0.1 s; a timeout with room for a loaded machine to answer (the silent-bridge test shows
# the timeout itself acts). Heartbeats are counted as they happen, not assumed from a sleep.
ANSWERED = {"heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 3.0}


async def _heartbeats(session: Any, count: int) -> None:
    """Wait until ``session`` has recorded ``count`` more answered heartbeats."""
    seen = [session.last_heartbeat]

    def counted() -> bool:
        if session.last_heartbeat != seen[-1]:
            seen.append(session.last_heartbeat)
        return len(seen) > count

    await wait_until(counted, timeout=15)


async def test_answering_bridge_stays_connected_and_heartbeat_is_recorded(make_cloud: CloudFactory) -> None:
    async with make_cloud(**ANSWERED) as cloud:
        async with FakeBridge(cloud.url, cloud.token()) as bridge:
            session = cloud.app.state.registry.all_sessions()[0]
            await _heartbeats(session, 5)
            assert not bridge.closed.is_set()
            assert cloud.app.state.registry.all_sessions() == [session]


async def test_token_expiry_without_reauth_closes_the_tunnel(make_cloud: CloudFactory) -> None:
    async with make_cloud(reauth_grace_s=0.0) as cloud:
        bridge = FakeBridge(cloud.url, cloud.token(ttl_s=1))
        await bridge.connect()
        await asyncio.wait_for(bridge.closed.wait(), 5)
        assert bridge.close_code == CloseCode.REAUTH_DEADLINE


async def test_reauth_extends_the_deadline(make_cloud: CloudFactory) -> None:
    async with make_cloud(reauth_grace_s=0.0) as cloud:
        async with FakeBridge(cloud.url, cloud.token(ttl_s=1)) as bridge:
            await bridge.reauth(cloud.token(ttl_s=600))
            await wait_until(lambda: bool(bridge.reauth_ok))
            await asyncio.sleep(1.5)
            assert not bridge.closed.is_set()
            assert bridge.reauth_ok[0].expires_at > time.time() + 500


async def test_reauth_as_another_user_is_refused(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token("alice")) as bridge:
        await bridge.reauth(cloud.token("mallory"))
        await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.UNAUTHORIZED
    assert "another user" in bridge.close_reason


async def test_same_bridge_reconnecting_replaces_the_old_connection(cloud: Cloud) -> None:
    old = FakeBridge(cloud.url, cloud.token())
    await old.connect()
    async with FakeBridge(cloud.url, cloud.token()):
        await asyncio.wait_for(old.closed.wait(), 5)
        assert old.close_code == CloseCode.REPLACED
        assert len(cloud.app.state.registry.all_sessions()) == 1


async def test_bridge_limit_per_user(make_cloud: CloudFactory) -> None:
    async with make_cloud(max_bridges_per_user=1) as cloud:
        async with FakeBridge(cloud.url, cloud.token(), bridge_id="one"):
            second = FakeBridge(cloud.url, cloud.token(), bridge_id="two")
            await second.connect()
            await asyncio.wait_for(second.closed.wait(), 5)
            assert second.close_code == 1008
            assert "too many bridges" in second.close_reason


async def test_drain_sends_goaway_then_closes_going_away(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token()) as bridge:
        await cloud.app.state.registry.drain(retry_after_s=2.0, deadline_s=1.0)
        await asyncio.wait_for(bridge.closed.wait(), 5)
        assert bridge.conn.going_away
        assert bridge.close_code == CloseCode.GOING_AWAY
    async with cloud.client() as client:
        assert (await client.get("/ready")).status_code == 503


async def test_a_bridge_at_the_limit_may_still_reconnect_with_its_own_id(make_cloud: CloudFactory) -> None:
    async with make_cloud(max_bridges_per_user=1) as cloud:
        old = FakeBridge(cloud.url, cloud.token(), bridge_id="one")
        await old.connect()
        async with FakeBridge(cloud.url, cloud.token(), bridge_id="one") as new:
            await asyncio.wait_for(old.closed.wait(), 5)
            assert old.close_code == CloseCode.REPLACED
            assert not new.closed.is_set()


async def test_an_idle_bridge_runs_on_timers_not_tasks(make_cloud: CloudFactory) -> None:
    async with make_cloud(**ANSWERED) as cloud:
        async with FakeBridge(cloud.url, cloud.token()) as bridge:
            session = cloud.app.state.registry.all_sessions()[0]
            await _heartbeats(session, 3)
            helpers = [t for t in asyncio.all_tasks() if _is_session_helper(t)]
            assert helpers == []  # Pings that were sent are done; nothing waits per session but the reader
            assert session.tunnel._timer is not None and session._reauth_timer is not None
            assert not bridge.closed.is_set()
        await wait_until(lambda: not cloud.app.state.registry.all_sessions())
        assert session.tunnel._timer is None or session.tunnel._timer.cancelled()
        assert session._reauth_timer is None or session._reauth_timer.cancelled()


def _is_session_helper(task: asyncio.Task[object]) -> bool:
    """A task of the session or of its runtime (the writer's comes and goes with frames to write: not counted)."""
    name = getattr(task.get_coro(), "__qualname__", "")
    return "BridgeSession._" in name or "Tunnel." in name


def test_bad_dev_issuer_settings_exit_2_without_a_traceback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(tmp_path / "issuer"),
        "DEV_REDIRECT_URIS": "not-a-url",
        "API_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cloudtolocalllm.bridge_api.cli"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "DEV_REDIRECT_URIS" in done.stderr
    assert "Traceback" not in done.stderr


def test_dev_auth_without_the_dev_extra_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    # A production install: the dev issuer cannot be imported (None in sys.modules makes every import fail).
    start = (
        "import sys; sys.modules['cloudtolocalllm.dev_issuer'] = None; "
        "from cloudtolocalllm.bridge_api.cli import main; main()"
    )
    env = {**os.environ, "DEV_AUTH": "true", "DEV_ISSUER_DIR": str(tmp_path / "issuer"), "API_PORT": "0"}
    done = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "api-backend: DEV_AUTH=true needs the dev issuer, which is not installed: "
        "install cloudtolocalllm-bridge-api[dev]"
    ]
    assert not (tmp_path / "issuer").exists()  # nothing was started
