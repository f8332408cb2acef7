"""Ollama-native behaviour through the tunnel with the official client: pull progress, blobs, create,
copy, delete, read-only mode."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from cloudtolocalllm.devkit.ollama import LLAMA32 as MODEL
from cloudtolocalllm.devkit.ollama import OllamaDouble, contract_double

from .conftest import Stack


@pytest.fixture
def fake_ollama() -> Iterator[OllamaDouble]:
    with contract_double() as backend:
        yield backend


@pytest.fixture
def client(stack: Stack, fake_ollama: OllamaDouble) -> Iterator[ollama.Client]:
    stack.bridge(fake_ollama.url, kind="ollama")
    with ollama.Client(host=stack.url + "/api/ollama", headers=stack.headers()) as client:
        yield client


def test_pull_streams_progress(client: ollama.Client) -> None:
    updates = list(client.pull(MODEL, stream=True))
    statuses = [u.status for u in updates]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    completed = [u.completed for u in updates if u.completed is not None]
    assert completed == sorted(completed)
    assert completed[-1] == 4000


def test_blob_upload_then_create(
    client: ollama.Client, stack: Stack, fake_ollama: OllamaDouble, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 32768  # 8 MiB, streamed from the file through the tunnel
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    digest = client.create_blob(path)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert fake_ollama.blobs[digest] == len(data)
    # HEAD tells whether the backend already has a blob (Ollama's protocol for skipping uploads).
    blobs = stack.url + "/api/ollama/api/blobs/"
    assert httpx.head(blobs + digest, headers=stack.headers()).status_code == 200
    assert httpx.head(blobs + "sha256:" + "0" * 64, headers=stack.headers()).status_code == 404
    result = client.create(model="mine:latest", files={"model.gguf": digest})
    assert result.status == "success"


def test_copy_and_delete(client: ollama.Client, fake_ollama: OllamaDouble) -> None:
    client.copy(MODEL, "backup:latest")
    client.delete("backup:latest")
    kinds = {k: v for k, _, v in fake_ollama.events}
    assert kinds["copy"] == {"source": MODEL, "destination": "backup:latest"}
    assert kinds["delete"] == {"model": "backup:latest"}


def test_read_only_bridge_refuses_pull_and_delete(stack: Stack, fake_ollama: OllamaDouble) -> None:
    stack.bridge(fake_ollama.url, kind="ollama", name="ro", extra=["--read-only"])
    with ollama.Client(host=stack.url + "/api/ollama", headers=stack.headers()) as client:
        _refuses_changes(client, fake_ollama)


def _refuses_changes(client: ollama.Client, fake_ollama: OllamaDouble) -> None:
    for call in (lambda: client.pull(MODEL), lambda: client.delete(MODEL)):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 403
        assert "read-only" in caught.value.error
    assert not [k for k, _, _ in fake_ollama.events if k in ("pull", "delete")]
    assert client.list().models[0].model == MODEL


def test_the_real_bridge_and_api_backend_batch_frames_and_answers_stay_whole(
    stack: Stack, client: ollama.Client
) -> None:
    # The two real programs agree on the protocol's batch feature at the handshake ...
    connected = [record for record in stack.api.records() if record.get("msg") == "bridge connected"]
    assert connected and connected[-1]["features"] == ["batch"]
    # ... and short answers, which now cross as one Batch message, arrive whole, one after another.
    names = [client.show(MODEL).details.family for _ in range(20)]
    assert names == [names[0]] * 20 and names[0]
    for i in range(5):
        question = [{"role": "user", "content": f"n{i}"}]
        parts = list(client.chat(model=MODEL, messages=question, stream=True, options={"num_predict": 5}))
        assert parts[-1].done and not any(part.done for part in parts[:-1])
        assert "".join(part.message.content for part in parts)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_api_backend_relays_on_uvloop_by_default_and_on_asyncios_loop_when_asked(
    stack: Stack, fake_ollama: OllamaDouble, loop: str
) -> None:
    if loop == "asyncio":
        stack.env["API_EVENT_LOOP"] = "asyncio"
        stack.restart_api()
    listening = [record for record in stack.api.records() if record.get("msg") == "listening"]
    assert listening[-1]["event_loop"] == loop
    stack.bridge(fake_ollama.url, kind="ollama")
    with ollama.Client(host=stack.url + "/api/ollama", headers=stack.headers()) as client:
        question = [{"role": "user", "content": "hello"}]
        parts = list(client.chat(model=MODEL, messages=question, stream=True, options={"num_predict": 5}))
    assert parts[-1].done and "".join(part.message.content for part in parts)
