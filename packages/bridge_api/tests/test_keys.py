"""API keys over real sockets (SQLite): /api/keys, keys on the relay and on /ws/bridge, scopes, revocation,
use counts, and the official ollama and openai clients sending a key."""

from __future__ import annotations

import asyncio

import httpx
import ollama
import openai
import pytest

from cloudtolocalllm.bridge_api.keys.format import generate_key
from cloudtolocalllm.devkit.peers import FakeBridge, Reply, chunks_of
from cloudtolocalllm.protocol import CloseCode, Open

from .conftest import Cloud, CloudFactory


async def test_create_shows_the_key_once_and_list_never_shows_it(cloud: Cloud) -> None:
    created = await cloud.create_key("inference", "bridge", name="laptop")
    assert created["key"].startswith("ctllm_") and created["key"].startswith(created["prefix"])
    assert created["scopes"] == ["bridge", "inference"]
    assert created["use_count"] == 0 and created["last_used_at"] is None
    async with cloud.client() as client:
        listing = (await client.get("/api/keys")).json()["keys"]
    assert [k["id"] for k in listing] == [created["id"]]
    assert set(listing[0]) == {"id", "name", "prefix", "scopes", "created_at", "last_used_at", "use_count"}
    assert created["key"] not in str(listing)


async def test_a_key_works_like_a_token_on_the_relay_and_counts_its_uses(make_cloud: CloudFactory) -> None:
    async with make_cloud(key_usage_flush_s=0.05) as cloud:
        key = (await cloud.create_key("inference"))["key"]
        async with FakeBridge(cloud.url, cloud.token()), cloud.client(bearer=key) as client:
            for _ in range(3):
                response = await client.post("/api/ollama/api/chat", json={"model": "smollm2:135m"})
                assert response.status_code == 200
                assert response.json() == {"path": "/api/chat"}

        async def counted() -> bool:
            async with cloud.client() as owner:
                listed = (await owner.get("/api/keys")).json()["keys"][0]
            return bool(listed["use_count"] == 3 and listed["last_used_at"])

        for _ in range(100):
            if await counted():
                break
            await asyncio.sleep(0.05)
        assert await counted()


async def test_revoked_unknown_and_malformed_keys_get_401_ollama_shaped(cloud: Cloud) -> None:
    created = await cloud.create_key("inference")
    async with cloud.client(bearer=created["key"]) as client:
        assert (await client.get("/api/ollama/api/tags")).status_code == 503  # accepted: no bridge yet
    async with cloud.client() as owner:
        assert (await owner.delete(f"/api/keys/{created['id']}")).status_code == 204
        assert (await owner.get("/api/keys")).json() == {"keys": []}
        assert (await owner.delete(f"/api/keys/{created['id']}")).status_code == 404
    for bearer, reason in [
        (created["key"], "unknown or revoked"),
        (generate_key(), "unknown or revoked"),
        ("ctllm_notakey", "malformed"),
        (created["key"][:-1] + ("x" if created["key"][-1] != "x" else "y"), "malformed"),
    ]:
        async with cloud.client(bearer=bearer) as client:
            response = await client.get("/api/ollama/api/tags")
        assert response.status_code == 401
        assert reason in response.json()["error"]
        assert response.headers["www-authenticate"].startswith('Bearer realm="cloudtolocalllm", error="invalid_token"')


async def test_a_wrong_scope_is_403_naming_the_scope(cloud: Cloud) -> None:
    inference = (await cloud.create_key("inference"))["key"]
    bridge_only = (await cloud.create_key("bridge"))["key"]
    async with FakeBridge(cloud.url, cloud.token()):
        async with cloud.client(bearer=inference) as client:
            pull = await client.post("/api/ollama/api/pull", json={"model": "smollm2:135m"})
            show = await client.post("/api/ollama/api/show", json={"model": "smollm2:135m"})
        async with cloud.client(bearer=bridge_only) as client:
            chat = await client.post("/api/ollama/v1/chat/completions", json={"model": "smollm2:135m"})
    assert pull.status_code == 403 and "'models:write'" in pull.json()["error"]
    assert 'scope="models:write"' in pull.headers["www-authenticate"]
    assert show.status_code == 200
    assert chat.status_code == 403 and "'inference'" in chat.json()["error"]


async def test_another_users_key_cannot_be_revoked_and_a_key_cannot_manage_keys(cloud: Cloud) -> None:
    bobs = await cloud.create_key("inference", user="bob")
    async with cloud.client("alice") as alice:
        assert (await alice.delete(f"/api/keys/{bobs['id']}")).status_code == 404
        assert (await alice.get("/api/keys")).json() == {"keys": []}
    async with cloud.client(bearer=bobs["key"]) as with_key:
        for response in (
            await with_key.get("/api/keys"),
            await with_key.post("/api/keys", json={"name": "more", "scopes": ["inference"]}),
            await with_key.delete(f"/api/keys/{bobs['id']}"),
        ):
            assert response.status_code == 403
            assert "API keys cannot manage API keys" in response.json()["error"]
    async with httpx.AsyncClient(base_url=cloud.url) as anonymous:
        assert (await anonymous.get("/api/keys")).status_code == 401


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "x", "scopes": ["admin"]}, "scopes"),
        ({"name": "", "scopes": ["inference"]}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"scopes": ["inference"]}, "name"),
        ("not json", "expected JSON"),
    ],
)
async def test_a_bad_key_request_is_400_saying_what_is_wrong(cloud: Cloud, body: object, problem: str) -> None:
    async with cloud.client() as client:
        if isinstance(body, str):
            response = await client.post("/api/keys", content=body)
        else:
            response = await client.post("/api/keys", json=body)
    assert response.status_code == 400
    assert problem in response.json()["error"]


async def test_the_key_limit_per_account_is_explicit(make_cloud: CloudFactory) -> None:
    async with make_cloud(max_keys_per_user=2) as cloud:
        await cloud.create_key("inference")
        await cloud.create_key("inference")
        async with cloud.client() as client:
            response = await client.post("/api/keys", json={"name": "third", "scopes": ["inference"]})
    assert response.status_code == 409
    assert "at most 2 keys" in response.json()["error"]


async def test_a_bridge_connects_with_a_bridge_key_and_revocation_closes_it(cloud: Cloud) -> None:
    inference_only = (await cloud.create_key("inference"))["key"]
    refused = FakeBridge(cloud.url, inference_only)
    with pytest.raises(Exception, match="403"):
        await refused.connect()
    created = await cloud.create_key("bridge")
    async with FakeBridge(cloud.url, created["key"]) as bridge:
        assert bridge.welcome is not None
        async with cloud.client() as owner:  # the owner's own token reaches the key's bridge
            assert (await owner.get("/api/ollama/api/version")).status_code == 200
            assert (await owner.delete(f"/api/keys/{created['id']}")).status_code == 204
        await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.UNAUTHORIZED
    assert "API key revoked" in bridge.close_reason


async def echo_chat(open_frame: Open, body: bytes) -> Reply:
    if open_frame.path == "/api/tags":
        return Reply(chunks=chunks_of(b'{"models":[{"name":"smollm2:135m","model":"smollm2:135m"}]}'))
    answer = b'{"model":"smollm2:135m","message":{"role":"assistant","content":"hi"},"done":true}'
    if open_frame.path == "/v1/chat/completions":
        answer = (
            b'{"id":"c1","object":"chat.completion","created":1,"model":"smollm2:135m","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
        )
    return Reply(chunks=chunks_of(answer))


async def test_the_official_ollama_and_openai_clients_send_a_key(cloud: Cloud) -> None:
    key = (await cloud.create_key("inference"))["key"]
    bearer = {"Authorization": f"Bearer {key}"}
    async with (
        FakeBridge(cloud.url, cloud.token(), handler=echo_chat) as bridge,
        ollama.AsyncClient(host=cloud.url + "/api/ollama", headers=bearer, trust_env=False) as client,
        openai.AsyncOpenAI(base_url=cloud.url + "/api/ollama/v1", api_key=key) as openai_client,
        ollama.AsyncClient(
            host=cloud.url + "/api/ollama", headers={"Authorization": "Bearer ctllm_x"}, trust_env=False
        ) as refused,
    ):
        listed = await client.list()
        chat = await client.chat(model="smollm2:135m", messages=[{"role": "user", "content": "hello"}])
        completion = await openai_client.chat.completions.create(
            model="smollm2:135m", messages=[{"role": "user", "content": "hello"}]
        )
        with pytest.raises(ollama.ResponseError) as error:
            await refused.list()
    assert [m.model for m in listed.models] == ["smollm2:135m"]
    assert chat.message.content == "hi"
    assert completion.choices[0].message.content == "hi"
    assert error.value.status_code == 401 and "malformed API key" in error.value.error
    assert {o.path for o in bridge.opens} >= {"/api/tags", "/api/chat", "/v1/chat/completions"}
    # The key never travels to the bridge.
    assert all(key not in str(o.headers) for o in bridge.opens)


async def test_keys_are_kept_across_a_restart_in_the_sqlite_file(make_cloud: CloudFactory) -> None:
    async with make_cloud() as first:
        created = await first.create_key("inference")
    async with make_cloud() as second, second.client(bearer=created["key"]) as client:
        assert (await client.get("/api/ollama/api/tags")).status_code == 503  # accepted; no bridge


async def test_a_bridge_may_reauth_with_a_bridge_key_and_that_keys_revocation_closes_it(cloud: Cloud) -> None:
    created = await cloud.create_key("bridge")
    async with FakeBridge(cloud.url, cloud.token()) as bridge:
        await bridge.reauth(created["key"])
        for _ in range(100):
            if bridge.reauth_ok:
                break
            await asyncio.sleep(0.02)
        assert bridge.reauth_ok
        async with cloud.client() as owner:
            assert (await owner.delete(f"/api/keys/{created['id']}")).status_code == 204
        await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.UNAUTHORIZED


async def test_a_reauth_with_a_key_lacking_the_bridge_scope_closes_the_tunnel(cloud: Cloud) -> None:
    inference_only = (await cloud.create_key("inference"))["key"]
    async with FakeBridge(cloud.url, cloud.token()) as bridge:
        await bridge.reauth(inference_only)
        await asyncio.wait_for(bridge.closed.wait(), 5)
    assert bridge.close_code == CloseCode.UNAUTHORIZED
    assert "'bridge' scope" in bridge.close_reason
