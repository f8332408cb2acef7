"""The Ollama double over real HTTP: its counting chat, blobs, OpenAI mode, and what it records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from cloudtolocalllm.core.testing import running_server, wait_until
from cloudtolocalllm.devkit.ollama import LLAMA32, OllamaDouble, contract_double


@pytest.fixture
async def served() -> AsyncIterator[tuple[OllamaDouble, httpx.AsyncClient]]:
    double = contract_double()
    async with running_server(double, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=url) as client:
            yield double, client


async def test_chat_counts_as_the_request_asks(served: tuple[OllamaDouble, httpx.AsyncClient]) -> None:
    double, client = served
    body = {"model": LLAMA32, "messages": [], "options": {"num_predict": 3, "delay_ms": 0}}
    response = await client.post("/api/chat", json=body)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["t0 ", "t1 ", "t2 ", ""]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 3
    await wait_until(lambda: double.event_times("chat-closed"))  # after the last byte went out
    assert [kind for kind, _, _ in double.events] == ["chat-start", "chat-body", "chat-done", "chat-closed"]


async def test_a_client_that_leaves_stops_the_generation(served: tuple[OllamaDouble, httpx.AsyncClient]) -> None:
    double, client = served
    body = {"model": LLAMA32, "messages": [], "options": {"num_predict": 1000, "delay_ms": 50}}  # 50 s
    async with client.stream("POST", "/api/chat", json=body) as response:
        await anext(response.aiter_lines())
    await wait_until(lambda: double.event_times("chat-closed"))
    assert not double.event_times("chat-done")


async def test_a_blob_is_kept_only_under_its_own_digest(served: tuple[OllamaDouble, httpx.AsyncClient]) -> None:
    double, client = served
    blob = b"layer" * 1000
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    assert (await client.post("/api/blobs/sha256:" + "0" * 64, content=blob)).status_code == 400
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 404
    created = await client.post(f"/api/blobs/{digest}", content=blob)
    assert created.status_code == 201
    assert created.json() == double.upload == {"size": len(blob), "sha256": digest.removeprefix("sha256:")}
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 200
    assert double.event_data("blob") == [len(blob)]


async def test_openai_mode_serves_v1_only_with_the_doubles_models() -> None:
    double = OllamaDouble(models=["a:1", "b:2"], openai=True)
    async with running_server(double, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/api/tags")).status_code == 404
            models = (await client.get("/v1/models")).json()
    assert [model["id"] for model in models["data"]] == ["a:1", "b:2"]
    assert [path for _, path, _ in double.requests] == ["/api/tags", "/v1/models"]


def test_on_a_thread_of_its_own_for_synchronous_callers() -> None:
    with contract_double(version="1.2.3") as double:
        assert httpx.get(f"{double.url}/api/version").json() == {"version": "1.2.3"}
        assert httpx.get(f"{double.url}/api/tags").json()["models"][0]["name"] == LLAMA32
