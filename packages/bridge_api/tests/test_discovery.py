"""``GET /.well-known/cloudtolocalllm``: what `cloudtolocalllm-bridge login <cloud>` reads, on a real server."""

from __future__ import annotations

import httpx
import pytest

from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core import SettingsError, load_settings

from .conftest import AUDIENCE, ISSUER, CloudFactory


async def test_the_document_names_the_issuer_client_audience_and_urls(make_cloud: CloudFactory) -> None:
    async with make_cloud(public_url="https://app.example.com/") as cloud, httpx.AsyncClient() as client:
        response = await client.get(cloud.url + "/.well-known/cloudtolocalllm")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.json() == {
        "version": 1,
        "issuer": ISSUER,
        "client_id": "cloudtolocalllm-bridge",
        "audience": AUDIENCE,
        "scope": "openid profile offline_access",
        "websocket_url": "wss://app.example.com/ws/bridge",
        "api_base": "https://app.example.com/api/ollama",
    }


async def test_without_a_public_url_the_origin_of_the_request_is_used(make_cloud: CloudFactory) -> None:
    async with (
        make_cloud(bridge_client_id="native-app-id") as cloud,
        httpx.AsyncClient() as client,
    ):
        document = (await client.get(cloud.url + "/.well-known/cloudtolocalllm")).json()
        head = await client.head(cloud.url + "/.well-known/cloudtolocalllm")
    host = cloud.url.removeprefix("http://")
    assert document["websocket_url"] == f"ws://{host}/ws/bridge"
    assert document["api_base"] == f"http://{host}/api/ollama"
    assert document["client_id"] == "native-app-id"
    assert head.status_code == 200


async def test_only_get_and_head_are_answered(make_cloud: CloudFactory) -> None:
    async with make_cloud() as cloud, httpx.AsyncClient() as client:
        posted = await client.post(cloud.url + "/.well-known/cloudtolocalllm", content=b"{}")
    assert posted.status_code == 405


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"API_PUBLIC_URL": "app.example.com"}, "API_PUBLIC_URL"),
        ({"API_PUBLIC_URL": "https://user:secret@app.example.com"}, "API_PUBLIC_URL"),
        ({"API_PUBLIC_URL": "https://app.example.com/?x=1"}, "API_PUBLIC_URL"),
        ({"API_BRIDGE_CLIENT_ID": "has space"}, "API_BRIDGE_CLIENT_ID"),
    ],
)
def test_bad_discovery_settings_name_their_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(ApiSettings, prefix="API_", environ=environ)
    assert variable in str(caught.value)
