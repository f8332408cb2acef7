"""The official ollama and openai clients, unmodified, through api-backend and a real bridge to a real
model (SmolLM2-135M on llama.cpp, deterministic at temperature 0)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import ollama
import openai
import pytest

from cloudtolocalllm.devkit.procs import Proc

from .conftest import Stack

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 16}
# llama.cpp's timings line, printed once per generation when it ends ("eval time = 81.2 ms / 16 runs").
GENERATION_DONE = re.compile(r"(?<!prompt )eval time\s*=\s*[\d.]+ ms /\s*(\d+) runs")


@pytest.fixture
def ollama_client(stack: Stack, local_model: str) -> Iterator[ollama.Client]:
    stack.bridge(local_model, kind="openai")
    with ollama.Client(host=stack.url + "/api/ollama", headers=stack.headers()) as client:
        yield client


@pytest.fixture
def openai_client(stack: Stack, local_model: str) -> Iterator[openai.OpenAI]:
    stack.bridge(local_model, kind="openai")
    with openai.OpenAI(base_url=stack.url + "/api/ollama/v1", api_key=stack.token(), max_retries=0) as client:
        yield client


def test_ollama_list_shows_the_bridged_model(ollama_client: ollama.Client) -> None:
    names = [m.model for m in ollama_client.list().models]
    assert MODEL in names


def test_ollama_show(ollama_client: ollama.Client) -> None:
    shown = ollama_client.show(MODEL)
    assert shown.details is not None
    assert shown.details.parameter_size == "135M"
    assert shown.details.format == "gguf"
    assert shown.details.family


def test_ollama_chat_answers_with_real_text(ollama_client: ollama.Client) -> None:
    response = ollama_client.chat(model=MODEL, messages=QUESTION, options=OPTIONS)
    assert "Paris" in response.message.content
    assert response.done is True


def test_ollama_chat_streams_several_chunks_then_done(ollama_client: ollama.Client) -> None:
    parts = list(ollama_client.chat(model=MODEL, messages=QUESTION, options=OPTIONS, stream=True))
    assert len(parts) >= 3
    assert all(not p.done for p in parts[:-1])
    assert parts[-1].done is True
    assert "Paris" in "".join(p.message.content for p in parts)


def test_ollama_chat_is_deterministic_at_temperature_0(ollama_client: ollama.Client) -> None:
    first = ollama_client.chat(model=MODEL, messages=QUESTION, options=OPTIONS).message.content
    second = ollama_client.chat(model=MODEL, messages=QUESTION, options=OPTIONS).message.content
    assert first == second


def test_ollama_generate_streams(ollama_client: ollama.Client) -> None:
    parts = list(ollama_client.generate(model=MODEL, prompt="The capital of France is", options=OPTIONS, stream=True))
    assert len(parts) >= 2
    assert parts[-1].done is True
    assert "".join(p.response for p in parts).strip()


def test_ollama_embed(ollama_client: ollama.Client) -> None:
    result = ollama_client.embed(model=MODEL, input=["hello", "world"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) > 100
    assert result.embeddings[0] != result.embeddings[1]


def test_ollama_unknown_model_is_a_404_response_error(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model="no-such-model", messages=QUESTION)
    assert caught.value.status_code == 404
    assert "not found" in caught.value.error


def test_openai_chat_completion(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        seed=42,
        max_tokens=16,  # type: ignore[arg-type]
    )
    assert "Paris" in (completion.choices[0].message.content or "")


def test_openai_chat_completion_streams_token_by_token(
    openai_client: openai.OpenAI, local_model_server: tuple[Proc, str]
) -> None:
    """The first token reaches the client while the model is still generating: llama.cpp logs its timings
    ("eval time") only when a generation ends, so at the first chunk there must be no new such line. A relay
    that buffered the answer would deliver its first chunk after that line."""
    server, _url = local_model_server

    def finished_generations() -> int:
        return len(GENERATION_DONE.findall(server.log_text()))

    before = finished_generations()
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        seed=42,
        max_tokens=300,  # about two seconds of generation here: the first chunk comes long before the end
        stream=True,  # type: ignore[arg-type]
    )
    at_first_chunk: int | None = None
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if at_first_chunk is None:
                at_first_chunk = finished_generations()
            text += chunk.choices[0].delta.content
    assert at_first_chunk == before, "the first chunk came after the generation had finished"
    assert finished_generations() == before + 1
    assert len(text.split()) >= 50


def test_openai_models_list(openai_client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in openai_client.models.list().data]


def test_openai_bad_token_is_401(stack: Stack, local_model: str) -> None:
    with (
        openai.OpenAI(base_url=stack.url + "/api/ollama/v1", api_key="not-a-token", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()
