"""The official ollama client -> the translator -> a real llama-cpp-python server with SmolLM2-135M.

`nox -s tests-bridge` prepares the bundled model's cache (``ctllm-local-model ensure``) first (minutes the
first time, then cached), so these never skip; without the cache they fail and say how to build it.
Generations are a few tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import ollama
import pytest

from cloudtolocalllm.bridge.backend import HttpBackend
from cloudtolocalllm.devkit.procs import Proc, start_local_model
from cloudtolocalllm.protocol import BackendKind

from .openai_compat_fakes import serve_translator, start

# The bundled model's launcher; its cache key holds the Python version (major.minor) that built the wheel.
LOCAL_MODEL = [sys.executable, "-m", "cloudtolocalllm.devkit.local_model"]
MODEL = "smollm2:135m"


pytestmark = pytest.mark.slow

SHORT = {"num_predict": 6, "temperature": 0}
# llama.cpp's timings line, printed once per generation when it ends ("eval time = 81.2 ms / 16 runs").
GENERATION_DONE = re.compile(r"(?<!prompt )eval time\s*=\s*[\d.]+ ms /\s*(\d+) runs")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    if subprocess.run([*LOCAL_MODEL, "model-path"], capture_output=True, check=False).returncode != 0:
        pytest.fail("the local model cache is not built: run `ctllm-local-model ensure` (nox does)")
    # Ready once one real completion has come back: a build the CPU cannot run fails here, with its log.
    server, url = start_local_model(tmp_path_factory.mktemp("llama"))
    yield server, url
    server.stop(timeout=10)


@pytest.fixture(scope="module")
def llama_url(llama_server: tuple[Proc, str]) -> str:
    return llama_server[1]


@pytest.fixture(scope="module")
def llama_log(llama_server: tuple[Proc, str]) -> Path:
    return llama_server[0].log_path


@pytest.fixture
async def real_upstream(llama_url: str) -> AsyncIterator[HttpBackend]:
    backend = HttpBackend(llama_url, kind=BackendKind.OPENAI, idle_timeout_s=60)
    yield backend
    await backend.aclose()


@pytest.fixture
async def client(real_upstream: HttpBackend) -> AsyncIterator[ollama.AsyncClient]:
    async with serve_translator(real_upstream) as url:
        client = ollama.AsyncClient(host=url, trust_env=False, timeout=60)
        yield client
        await client.close()


async def test_chat(client: ollama.AsyncClient) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    parts = [part async for part in await client.chat(MODEL, messages, stream=True, options=SHORT)]
    assert len(parts) >= 2
    assert not any(part.done for part in parts[:-1])
    final = parts[-1]
    assert final.done
    assert final.done_reason in ("stop", "length")
    assert "".join(part.message.content or "" for part in parts).strip()
    assert final.eval_count is not None
    assert 0 < final.eval_count <= 6
    assert final.total_duration is not None
    assert final.total_duration > 0

    whole = await client.chat(MODEL, messages, options=SHORT)
    assert whole.done
    assert (whole.message.content or "").strip()
    assert whole.prompt_eval_count is not None
    assert whole.prompt_eval_count > 0


async def test_generate(client: ollama.AsyncClient) -> None:
    templated = await client.generate(MODEL, "Name a colour.", system="Answer in one word.", options=SHORT)
    assert (templated.response or "").strip()
    assert templated.context == []
    raw = [part async for part in await client.generate(MODEL, "The sky is", raw=True, stream=True, options=SHORT)]
    assert "".join(part.response or "" for part in raw).strip()
    assert raw[-1].done


async def test_json_schema_format(client: ollama.AsyncClient) -> None:
    # llama-cpp-python refuses OpenAI's json_schema: this goes through the json_object fallback.
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    answer = await client.chat(
        MODEL, [{"role": "user", "content": "A colour?"}], format=schema, options={"num_predict": 30, "temperature": 0}
    )
    assert (answer.message.content or "").lstrip().startswith("{")


async def test_embeddings(client: ollama.AsyncClient) -> None:
    embedded = await client.embed(MODEL, ["hello", "world"])
    assert len(embedded.embeddings) == 2
    assert all(len(vector) == 576 for vector in embedded.embeddings)
    assert all(math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-6) for vector in embedded.embeddings)
    legacy = await client.embeddings(MODEL, "hello")
    assert len(legacy.embedding) == 576


async def test_models(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert [model.model for model in listed.models] == [MODEL]
    shown = await client.show(MODEL)
    assert shown.details is not None
    assert shown.details.parameter_size == "135M"
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("llama3:8b")
    assert missing.value.status_code == 404


async def test_prompt_over_the_context_is_an_error(client: ollama.AsyncClient) -> None:
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(ollama.ResponseError, match="context length") as whole:
        await client.chat(MODEL, long, options=SHORT)
    assert whole.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="without finishing"):
        async for _ in await client.chat(MODEL, long, stream=True, options=SHORT):
            pass


async def test_closing_early_stops_the_generation(real_upstream: HttpBackend, llama_log: Path) -> None:
    # llama.cpp logs "eval time = ... / N runs" when a generation runs to its end, N being the tokens it made;
    # one that is closed early logs nothing. The server runs with --interrupt_requests false, so a generation
    # that went on after the close would run to its 1000 tokens before the next request, and log them.
    story = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "options": {"num_predict": 1000, "temperature": 0},
    }
    before = len(GENERATION_DONE.findall(await asyncio.to_thread(llama_log.read_text)))
    response = await start(real_upstream, "POST", "/api/chat", story)
    first = json.loads(await asyncio.wait_for(anext(aiter(response.body)), 30))
    assert first["done"] is False
    await response.aclose()

    quick = await start(real_upstream, "POST", "/api/chat", {**story, "stream": False, "options": SHORT})
    async with quick:
        answer = json.loads(b"".join([chunk async for chunk in quick.body]))
    assert answer["done"] is True
    finished = [int(n) for n in GENERATION_DONE.findall(await asyncio.to_thread(llama_log.read_text))[before:]]
    assert finished, "llama.cpp logged no generation at all: this test could not tell"
    assert max(finished) <= SHORT["num_predict"], f"a closed generation went on: {finished} tokens"
