from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.devkit.procs import (
    Proc,
    dev_auth_env,
    free_port,
    read_metric,
    start_api_backend,
    start_bridge,
    start_load_balancer,
    start_local_model,
    start_redis,
    wait_for,
)

ISSUER = "http://127.0.0.1/dev-issuer"
AUDIENCE = "cloudtolocalllm-e2e"
# Short heartbeats and drain so tests see a dead bridge or a stopping api-backend within seconds.
FAST_TIMINGS = {"API_HEARTBEAT_INTERVAL_S": "2", "API_HEARTBEAT_TIMEOUT_S": "6", "API_GRACEFUL_TIMEOUT_S": "5"}


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def local_model_server(logs: Path) -> Iterator[tuple[Proc, str]]:
    """llama.cpp serving SmolLM2-135M (OpenAI-compatible), shared by the whole session: its process and URL."""
    proc, url = start_local_model(logs)
    yield proc, url
    proc.stop()


@pytest.fixture(scope="session")
def local_model(local_model_server: tuple[Proc, str]) -> str:
    return local_model_server[1]


@dataclass
class Stack:
    """api-backend plus the bridges a test starts; everything is stopped at the end of the test."""

    logs: Path
    root: Path
    env: dict[str, str]
    issuer: DevIssuer
    api: Proc
    url: str
    procs: list[Proc] = field(default_factory=list)

    def token(self, user: str = "alice", **kwargs: object) -> str:
        return self.issuer.mint(user, **kwargs)  # type: ignore[arg-type]

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def bridge(
        self,
        backend: str,
        *,
        user: str = "alice",
        name: str = "e2e",
        kind: str = "auto",
        wait: bool = True,
        extra: list[str] | None = None,
    ) -> Proc:
        token_file = self.root / f"token-{user}-{name}"
        token_file.write_text(self.token(user, ttl_s=3600))
        proc = start_bridge(
            self.logs,
            cloud=self.url,
            token_file=token_file,
            backend=backend,
            kind=kind,
            state_dir=self.root / f"state-{user}-{name}",
            name=name,
            extra=extra,
        )
        self.procs.append(proc)
        if wait:
            self.wait_bridges(user, lambda bridges: any(b["name"] == name for b in bridges))
        return proc

    def status(self, user: str = "alice") -> list[dict[str, object]]:
        response = httpx.get(self.url + "/api/bridge/status", headers=self.headers(user), timeout=5)
        response.raise_for_status()
        return list(response.json()["bridges"])

    def wait_bridges(
        self, user: str, predicate: Callable[[list[dict[str, object]]], bool], timeout: float = 30
    ) -> None:
        wait_for(lambda: predicate(self.status(user)), timeout, f"bridges of {user}", interval=0.1)

    def restart_api(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.api.stop()
        self.api, self.url = start_api_backend(self.logs, self.env, port=port)

    def metric(self, name: str) -> float:
        return read_metric(self.url, name)


@pytest.fixture
def stack(logs: Path, tmp_path: Path) -> Iterator[Stack]:
    auth_env, issuer = dev_auth_env(tmp_path / "issuer", ISSUER, AUDIENCE)
    env = {**auth_env, **FAST_TIMINGS, "API_DATA_DIR": str(tmp_path / "api-data")}  # kept across restart_api
    api, url = start_api_backend(logs, env, port=free_port())  # restart_api starts it again on this port
    running = Stack(logs=logs, root=tmp_path, env=env, issuer=issuer, api=api, url=url)
    yield running
    for proc in running.procs:
        proc.stop()
    running.api.stop()


@dataclass
class Replicas:
    """Three api-backend processes sharing one real Redis, behind a round-robin load balancer (nginx)."""

    logs: Path
    root: Path
    issuer: DevIssuer
    env: dict[str, str]
    redis: Proc
    redis_url: str
    apis: list[Proc]
    urls: list[str]
    lb_url: str
    procs: list[Proc] = field(default_factory=list)

    def token(self, user: str = "alice") -> str:
        return self.issuer.mint(user)

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def bridge(self, backend: str, *, user: str = "alice", name: str = "e2e", via: str | None = None) -> Proc:
        """A real bridge, connected through the load balancer unless ``via`` names one replica."""
        token_file = self.root / f"token-{user}-{name}"
        token_file.write_text(self.issuer.mint(user, ttl_s=3600))
        proc = start_bridge(
            self.logs,
            cloud=via or self.lb_url,
            token_file=token_file,
            backend=backend,
            kind="ollama",
            state_dir=self.root / f"state-{user}-{name}",
            name=name,
        )
        self.procs.append(proc)
        self.wait_bridges(user, lambda bridges: any(b["name"] == name for b in bridges))
        return proc

    def status(self, user: str = "alice", url: str | None = None) -> httpx.Response:
        return httpx.get((url or self.urls[0]) + "/api/bridge/status", headers=self.headers(user), timeout=10)

    def wait_bridges(
        self,
        user: str,
        predicate: Callable[[list[dict[str, object]]], bool],
        *,
        url: str | None = None,
        timeout: float = 30,
    ) -> None:
        def holds() -> bool:
            response = self.status(user, url)
            return response.status_code == 200 and predicate(response.json()["bridges"])

        wait_for(holds, timeout, f"bridges of {user}", interval=0.1)

    def metric(self, url: str, name: str) -> float:
        return read_metric(url, name)

    def holder(self) -> int:
        """Index of the one replica holding a bridge (tests that use this have exactly one connected)."""
        held = [
            i
            for i, (api, url) in enumerate(zip(self.apis, self.urls, strict=True))
            if api.alive() and self.metric(url, "bridges_connected") > 0
        ]
        assert len(held) == 1, f"expected one replica holding the bridge, found {held}"
        return held[0]

    def restart_redis(self, *, down: Callable[[], None]) -> None:
        """Stop Redis, run ``down`` (checks while it is down), start it again, empty, on the same port."""
        self.redis.stop()
        down()
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.redis, self.redis_url = start_redis(self.logs, self.root / "redis", port=port)


@pytest.fixture
def replicas(logs: Path, tmp_path: Path) -> Iterator[Replicas]:
    auth_env, issuer = dev_auth_env(tmp_path / "issuer", ISSUER, AUDIENCE)
    redis, redis_url = start_redis(logs, tmp_path / "redis")
    env = {
        **auth_env,
        **FAST_TIMINGS,
        "API_REDIS_URL": redis_url,
        "API_DIRECTORY_TTL_S": "3",
        "API_DIRECTORY_REFRESH_S": "1",
        # API keys: one SQLite file shared by the three processes; revocations travel over the Redis.
        "API_DATA_DIR": str(tmp_path / "data"),
    }
    apis: list[Proc] = []
    urls: list[str] = []
    lb: Proc | None = None
    running: Replicas | None = None
    try:
        for _ in range(3):
            api, url = start_api_backend(logs, env)  # binds port 0; peers reach it at http://127.0.0.1:<port>
            apis.append(api)
            urls.append(url)
        lb, lb_url = start_load_balancer(logs, tmp_path / "lb", urls)
        running = Replicas(logs, tmp_path, issuer, env, redis, redis_url, apis, urls, lb_url)
        yield running
    finally:
        for proc in running.procs if running else []:
            proc.stop()
        if lb is not None:
            lb.stop()
        for api in apis:
            api.stop()
        (running.redis if running else redis).stop()


# The chat app built once per module, and Debian's Chromium, for the browser tests (test_web_app*.py).


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .web import build_app  # web.py imports this module: import it when the fixture runs

    out = tmp_path_factory.mktemp("flutter-app")
    report = build_app(out)
    assert report["first_load_gzip_bytes"] <= 150 * 1024
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    from .web import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()
