"""A real api-backend whose embedded dev issuer lives at its own URL (so its discovery document names an
issuer the bridge can reach), and a real Bridge connected to it, for the login and client-mode tests."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from cloudtolocalllm.bridge.backoff import Backoff
from cloudtolocalllm.bridge.config import BridgeSettings
from cloudtolocalllm.bridge.runner import Bridge
from cloudtolocalllm.bridge.token import TokenSource
from cloudtolocalllm.bridge_api.app import build_app
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.auth import AuthSettings
from cloudtolocalllm.core.serving import bind_socket, serve
from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.dev_issuer import DevIssuer, dev_issuer_from

AUDIENCE = "cloudtolocalllm-test"


@dataclass
class Cloud:
    url: str
    issuer: DevIssuer

    def token(self, user: str = "alice", **kwargs: Any) -> str:
        return self.issuer.mint(user, **kwargs)


@asynccontextmanager
async def api_backend(keys: Path, **overrides: Any) -> AsyncIterator[Cloud]:
    """api-backend on a loopback port, DEV_ISSUER_URL = <its own URL>/dev-issuer (as the dev stack does)."""
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    auth = AuthSettings(
        dev_auth=True, dev_issuer_dir=str(keys), dev_issuer_url=url + "/dev-issuer", dev_audience=AUDIENCE
    )
    # Its SQLite database for API keys beside the issuer's keys, never in the user's data folder.
    defaults = ApiSettings(reconnect_grace_s=0, data_dir=str(keys.parent / "api-data"))
    app = build_app(msgspec.structs.replace(defaults, **overrides), auth)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, sock=sock, graceful_timeout_s=1.0, shutdown_trigger=stop.wait))
    try:
        yield Cloud(url, dev_issuer_from(auth))
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            sock.close()


@asynccontextmanager
async def running_bridge(cloud: Cloud, backend_url: str, state: Path, user: str = "alice") -> AsyncIterator[Bridge]:
    """A real Bridge serving ``backend_url`` for ``user``, connected (welcomed) before this yields."""
    settings = BridgeSettings(
        cloud_url=cloud.url, backend_url=backend_url, state_dir=str(state), status_interval_s=30.0, name="desk"
    )
    bridge = Bridge(
        settings,
        TokenSource(env_token=cloud.token(user)),
        backoff=Backoff(base_s=0.05, cap_s=0.2, rng=random.Random(1)),
    )
    task = asyncio.create_task(bridge.run())
    try:
        await wait_until(lambda: task.done() or (bridge.active is not None and bridge.active.welcome is not None))
        assert not task.done(), bridge.exit_message
        await wait_until(lambda: bridge.backend_state.reachable)
        yield bridge
    finally:
        bridge.request_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 10)
