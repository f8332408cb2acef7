"""Right after start-up (a restart or an update) bridges are still reconnecting: a request for an account
without a bridge waits for it instead of failing; once the window has passed, "no bridge" answers at once."""

from __future__ import annotations

import asyncio

from cloudtolocalllm.devkit.peers import FakeBridge

from .conftest import CloudFactory


async def test_a_request_during_the_grace_waits_for_the_bridge_to_reconnect(make_cloud: CloudFactory) -> None:
    async with make_cloud(reconnect_grace_s=30) as cloud, cloud.client() as client:
        request = asyncio.create_task(client.get("/api/ollama/api/version"))
        tags = asyncio.create_task(client.get("/api/ollama/api/tags"))  # a merged listing waits too
        await asyncio.sleep(0.5)
        assert not request.done() and not tags.done()  # no bridge yet: waiting, not failing
        async with FakeBridge(cloud.url, cloud.token()):
            response = await asyncio.wait_for(request, 10)
            listing = await asyncio.wait_for(tags, 10)
        assert response.status_code == 200, response.text
        assert listing.status_code == 200, listing.text


async def test_the_wait_ends_with_the_grace_and_other_accounts_do_not_wake_it(make_cloud: CloudFactory) -> None:
    async with make_cloud(reconnect_grace_s=1.5) as cloud, cloud.client() as client:
        request = asyncio.create_task(client.get("/api/ollama/api/version"))
        async with FakeBridge(cloud.url, cloud.token("someone-else")):  # not this account's bridge
            response = await asyncio.wait_for(request, 10)
        assert response.status_code == 503 and "no bridge is connected" in response.json()["error"]
        # Past the window: at once, as without a grace.
        response = await client.get("/api/ollama/api/version")
        assert response.status_code == 503
        assert cloud.app.state.registry._arrivals == {}  # nothing kept for accounts that never connected
