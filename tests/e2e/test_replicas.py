"""Several api-backend replicas as real processes: three replicas sharing one real redis-server, behind a
round-robin nginx (no sticky sessions), real bridges. A request that lands on one replica reaches a bridge
held by another, streamed and cancelable; a replica killed mid-stream; Redis restarted under the replicas;
users isolated across replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from cloudtolocalllm.devkit.ollama import LLAMA32 as MODEL
from cloudtolocalllm.devkit.ollama import OllamaDouble, contract_double
from cloudtolocalllm.devkit.procs import wait_for

from .conftest import Replicas

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "options": {"num_predict": 200}}


@pytest.fixture
def fake_ollama() -> Iterator[OllamaDouble]:
    with contract_double() as backend:
        yield backend


def test_a_request_on_one_replica_streams_from_the_bridge_on_another(
    replicas: Replicas, fake_ollama: OllamaDouble
) -> None:
    replicas.bridge(fake_ollama.url, via=replicas.urls[1])
    with (
        httpx.Client(base_url=replicas.urls[0], headers=replicas.headers(), timeout=30) as client,
        client.stream("POST", "/api/ollama/api/chat", json=CHAT) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        # The first chunk arrived while the backend is still generating: streamed, not buffered.
        assert not fake_ollama.event_times("chat-done")
        rest = [json.loads(line) for line in lines]
    assert rest[-1]["done"] is True
    assert len(rest) == 200
    assert replicas.metric(replicas.urls[0], "replica_forwarded_requests_total") == 1
    assert replicas.metric(replicas.urls[0], "bridges_connected") == 0


def test_cancel_on_one_replica_stops_generation_behind_another(replicas: Replicas, fake_ollama: OllamaDouble) -> None:
    replicas.bridge(fake_ollama.url, via=replicas.urls[2])
    with httpx.Client(base_url=replicas.urls[0], headers=replicas.headers(), timeout=30) as client:
        asked_at = time.monotonic()
        with client.stream("POST", "/api/ollama/api/chat", json=CHAT) as response:
            lines = response.iter_lines()
            next(lines)
            # What crossing client -> replica 0 -> replica 2 -> bridge -> backend and back costs in this run.
            first_line_s = time.monotonic() - asked_at
            for _ in range(2):
                next(lines)
            closed_at = time.monotonic()  # leaving the block closes the stream
    stopped = wait_for(lambda: fake_ollama.event_times("chat-closed"), 10, "the backend to see the cancel")
    # The cancel crosses the same hops: within a second, plus twice the measured crossing on a slow machine
    # (test_faults.py bounds the one-replica case by 1 s).
    assert 0 < stopped[0] - closed_at < 1.0 + 2 * first_line_s, (stopped[0] - closed_at, first_line_s)
    assert not fake_ollama.event_times("chat-done"), "generation must not have run to the end"
    wait_for(lambda: replicas.metric(replicas.urls[2], "relay_streams_active") == 0, 10, "no stream left")


def test_a_replica_killed_mid_stream(replicas: Replicas, fake_ollama: OllamaDouble) -> None:
    """Its relayed client gets a terminal error, its bridge reconnects to another replica through the
    load balancer, and the record of a bridge that does not come back expires."""
    replicas.bridge(fake_ollama.url, name="comes-back")
    victim = replicas.holder()
    entry = (victim + 1) % 3
    # A second bridge connected straight to the victim, that will not reconnect (its address dies).
    replicas.bridge(fake_ollama.url, user="carol", name="gone-for-good", via=replicas.urls[victim])
    replicas.wait_bridges("carol", lambda bridges: len(bridges) == 1, url=replicas.urls[entry])
    with (
        httpx.Client(base_url=replicas.urls[entry], headers=replicas.headers(), timeout=30) as client,
        client.stream("POST", "/api/ollama/api/chat", json=CHAT) as response,
    ):
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        killed_at = time.time()
        replicas.apis[victim].kill()
        rest = list(lines)
    assert json.loads(rest[-1]) == {"error": "stream interrupted: the server holding your bridge stopped answering"}
    # The bridge comes back on a surviving replica (a new connection) and serves requests landing anywhere alive.
    replicas.wait_bridges(
        "alice",
        lambda bridges: [float(b["connected_since"]) > killed_at for b in bridges] == [True],  # type: ignore[arg-type]
        url=replicas.urls[entry],
        timeout=60,
    )
    survivors = [url for i, url in enumerate(replicas.urls) if i != victim]
    for url in survivors:
        with httpx.Client(base_url=url, headers=replicas.headers(), timeout=30) as client:
            assert client.get("/api/ollama/api/version").json() == {"version": "0.6.2"}
    # Nobody refreshes carol's record any more: it lapses after the TTL (3 s here).
    replicas.wait_bridges("carol", lambda bridges: bridges == [], url=replicas.urls[entry], timeout=15)
    with httpx.Client(base_url=replicas.urls[entry], headers=replicas.headers("carol"), timeout=30) as client:
        assert client.get("/api/ollama/api/version").status_code == 503


def test_redis_restarted_clear_errors_while_down_and_recovery_without_restarting_replicas(
    replicas: Replicas, fake_ollama: OllamaDouble
) -> None:
    replicas.bridge(fake_ollama.url, via=replicas.urls[1])
    replicas.bridge(fake_ollama.url, user="dave", name="dave-local", via=replicas.urls[0])
    pids = [api.pid for api in replicas.apis]
    entry = replicas.urls[0]

    def while_down() -> None:
        wait_for(lambda: replicas.metric(entry, "bridge_directory_up") == 0, 15, "the replica to notice")
        with httpx.Client(base_url=entry, timeout=30) as client:
            remote = client.get("/api/ollama/api/version", headers=replicas.headers())
            local = client.get("/api/ollama/api/version", headers=replicas.headers("dave"))
            ready = client.get("/ready")
        assert remote.status_code == 503
        assert remote.headers["retry-after"] == "2"
        assert "bridge directory is unavailable" in remote.json()["error"]
        assert local.json() == {"version": "0.6.2"}, "a bridge on the replica itself keeps working"
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"

    replicas.restart_redis(down=while_down)

    def served() -> bool:
        response = httpx.get(entry + "/api/ollama/api/version", headers=replicas.headers(), timeout=30)
        return response.status_code == 200

    wait_for(served, 20, "the replicas to re-publish into the empty Redis")
    assert [api.pid for api in replicas.apis] == pids and all(api.alive() for api in replicas.apis)
    assert httpx.get(entry + "/ready", timeout=10).json()["status"] == "ok"


def test_users_stay_isolated_across_replicas(replicas: Replicas, fake_ollama: OllamaDouble) -> None:
    replicas.bridge(fake_ollama.url, user="alice", name="alices", via=replicas.urls[1])
    replicas.bridge(fake_ollama.url, user="bob", name="bobs", via=replicas.urls[2])
    [alices] = replicas.status("alice").json()["bridges"]
    assert [b["name"] for b in replicas.status("bob").json()["bridges"]] == ["bobs"]
    with httpx.Client(base_url=replicas.urls[0], headers=replicas.headers("bob"), timeout=30) as client:
        pinned = client.get("/api/ollama/api/version", headers={"X-CloudToLocalLLM-Bridge": str(alices["id"])})
        forged = client.get(
            "/api/ollama/api/version",
            headers={"X-CloudToLocalLLM-Bridge": str(alices["id"]), "X-CloudToLocalLLM-Forwarded": "1"},
        )
    assert pinned.status_code == 404, "bob cannot pin alice's bridge from any replica"
    assert forged.status_code in (404, 503), "a forged hop header only restricts bob to this replica"
    with httpx.Client(base_url=replicas.urls[1], headers=replicas.headers("mallory"), timeout=30) as client:
        assert client.get("/api/ollama/api/version").status_code == 503  # no bridge of his own anywhere


def test_the_official_openai_client_on_one_replica_gets_a_real_answer_from_a_bridge_on_another(
    replicas: Replicas, local_model: str
) -> None:
    token_file = replicas.root / "token-model"
    token_file.write_text(replicas.issuer.mint("alice", ttl_s=3600))
    from cloudtolocalllm.devkit.procs import start_bridge

    replicas.procs.append(
        start_bridge(
            replicas.logs,
            cloud=replicas.urls[1],
            token_file=token_file,
            backend=local_model,
            kind="openai",
            state_dir=replicas.root / "state-model",
            name="model",
        )
    )
    replicas.wait_bridges("alice", lambda bridges: any(b["name"] == "model" for b in bridges))
    with openai.OpenAI(base_url=replicas.urls[0] + "/api/ollama/v1", api_key=replicas.token(), max_retries=0) as client:
        stream = client.chat.completions.create(
            model="smollm2:135m",
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
            temperature=0,
            seed=42,
            max_tokens=16,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in text


def test_an_api_key_works_through_every_replica_and_its_revocation_holds_on_all_of_them(
    replicas: Replicas, fake_ollama: OllamaDouble
) -> None:
    """The official ollama client sends a key through the load balancer to a real bridge; the key is revoked
    on one replica process and the other two refuse it within milliseconds (Redis pub/sub between processes)."""
    replicas.bridge(fake_ollama.url, via=replicas.urls[1])
    created = httpx.post(
        replicas.lb_url + "/api/keys",
        json={"name": "script", "scopes": ["inference"]},
        headers=replicas.headers(),
        timeout=10,
    )
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    client = ollama.Client(host=replicas.lb_url + "/api/ollama", headers={"Authorization": f"Bearer {key}"})
    with client:
        for _ in range(3):  # round robin: every replica verifies (and caches) the key
            parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True))
            assert parts[-1].done and len(parts) > 1
            assert MODEL in [m.model for m in client.list().models]
    keyed = {"Authorization": f"Bearer {key}"}
    for url in replicas.urls:
        assert httpx.get(url + "/api/ollama/api/version", headers=keyed, timeout=10).status_code == 200

    revoked = httpx.delete(f"{replicas.urls[0]}/api/keys/{key_id}", headers=replicas.headers(), timeout=10)
    assert revoked.status_code == 204
    revoked_at = time.perf_counter()
    latencies = []
    with httpx.Client(headers=keyed, timeout=10) as http:
        for url in replicas.urls[1:]:
            deadline = time.perf_counter() + 30
            while http.get(url + "/api/ollama/api/version").status_code != 401:
                assert time.perf_counter() < deadline, f"{url} still accepts the revoked key"
            latencies.append(time.perf_counter() - revoked_at)
    print(f"revocation reached the other replica processes after {[round(x * 1000, 1) for x in latencies]} ms")
    assert max(latencies) < 5  # a broadcast (the cache would keep the key for API_KEY_CACHE_TTL_S, 60 s)
    with (
        ollama.Client(host=replicas.lb_url + "/api/ollama", headers=keyed) as again,
        pytest.raises(ollama.ResponseError) as refused,
    ):
        again.list()
    assert refused.value.status_code == 401 and "revoked" in refused.value.error
