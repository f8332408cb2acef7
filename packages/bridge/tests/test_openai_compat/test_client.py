"""The official ollama client, unmodified, against the translator (served over HTTP the way the cloud relays
it) in front of the fake OpenAI-compatible server: what users' code sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import ollama
import pytest

from cloudtolocalllm.bridge.backend import HttpBackend
from cloudtolocalllm.devkit.ollama import OpenAIServer
from cloudtolocalllm.devkit.ollama.openai import MODEL, chat_chunk, sse

from .openai_compat_fakes import serve_translator


@pytest.fixture
async def client(upstream: HttpBackend) -> AsyncIterator[ollama.AsyncClient]:
    async with serve_translator(upstream) as url:
        client = ollama.AsyncClient(host=url, trust_env=False)
        yield client
        await client.close()


async def test_chat_stream_and_whole(client: ollama.AsyncClient) -> None:
    parts = [part async for part in await client.chat(MODEL, [{"role": "user", "content": "hi"}], stream=True)]
    assert all(isinstance(part, ollama.ChatResponse) for part in parts)
    assert "".join(part.message.content or "" for part in parts) == "Ah, welcome"
    assert parts[-1].done
    assert parts[-1].done_reason == "length"
    whole = await client.chat(MODEL, [{"role": "user", "content": "hi"}])
    assert whole.message.content == "Just another day at the office! I"
    assert whole.eval_count == 8


async def test_generate_stream_and_whole(client: ollama.AsyncClient) -> None:
    parts = [part async for part in await client.generate(MODEL, "The sky is", raw=True, stream=True)]
    assert "".join(part.response or "" for part in parts) == " a place where"
    whole = await client.generate(MODEL, "Why?", system="Be brief.", options={"num_predict": 8, "temperature": 0})
    assert whole.response == "Just another day at the office! I"
    assert whole.done


async def test_embeddings(client: ollama.AsyncClient) -> None:
    embedded = await client.embed(MODEL, ["a", "b", "c"])
    assert [vector[:2] for vector in embedded.embeddings] == [[0.6, 0.8]] * 3
    legacy = await client.embeddings(MODEL, "a")
    assert list(legacy.embedding) == [3.0, 4.0, 0.0, 0.0]


async def test_models(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert [model.model for model in listed.models] == [MODEL]
    assert listed.models[0].details is not None
    assert listed.models[0].details.parameter_size == "135M"
    shown = await client.show(MODEL)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo == {"general.architecture": "smollm2"}
    assert (await client.ps()).models == []


async def test_errors_reach_the_client_as_response_errors(fake: OpenAIServer, client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("llama3:8b")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'llama3:8b' not found")

    with pytest.raises(ollama.ResponseError) as refused:
        await client.pull(MODEL)
    assert refused.value.status_code == 403
    assert "manage models in that server itself" in refused.value.error

    fake.errors["/v1/chat/completions"] = (400, "application/json", b'{"error":{"message":"context too long"}}')
    with pytest.raises(ollama.ResponseError) as upstream_error:
        # A streamed call sends its request when iterated.
        async for _ in await client.chat(MODEL, [{"role": "user", "content": "hi"}], stream=True):
            pass
    assert (upstream_error.value.status_code, upstream_error.value.error) == (400, "context too long")


async def test_mid_stream_error_raises_in_the_client_loop(fake: OpenAIServer, client: ollama.AsyncClient) -> None:
    fake.chat_stream = sse(chat_chunk({"content": "par"}), done=False) + b'error: {"message":"slot lost"}\n\n'
    stream = await client.chat(MODEL, [{"role": "user", "content": "hi"}], stream=True)
    assert (await anext(stream)).message.content == "par"
    with pytest.raises(ollama.ResponseError, match="slot lost"):
        await anext(stream)


async def test_client_going_away_stops_the_upstream(fake: OpenAIServer, client: ollama.AsyncClient) -> None:
    fake.held = asyncio.Queue()
    fake.held.put_nowait(sse(chat_chunk({"content": "tok"}), done=False))
    stream = await client.chat(MODEL, [{"role": "user", "content": "hi"}], stream=True)
    first = await anext(stream)
    assert first.message.content == "tok"
    await stream.aclose()  # leaves the `async with` that holds the HTTP response: the connection closes
    await asyncio.wait_for(fake.disconnected.wait(), 5)
