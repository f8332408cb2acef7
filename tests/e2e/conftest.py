from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.core.auth import DevIssuer

from .procs import Proc, start_api_backend, start_bridge, start_local_model, wait_for

ISSUER = "http://127.0.0.1/dev-issuer"
AUDIENCE = "cloudtolocalllm-e2e"


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def local_model(logs: Path) -> Iterator[str]:
    """llama.cpp serving SmolLM2-135M (OpenAI-compatible), shared by the whole session."""
    proc, url = start_local_model(logs)
    yield url
    proc.stop()


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
        text = httpx.get(self.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} not found")


@pytest.fixture
def stack(logs: Path, tmp_path: Path) -> Iterator[Stack]:
    env = {
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(tmp_path / "issuer"),
        "DEV_ISSUER_URL": ISSUER,
        "DEV_AUDIENCE": AUDIENCE,
        "API_HEARTBEAT_INTERVAL_S": "2",
        "API_HEARTBEAT_TIMEOUT_S": "6",
        "API_GRACEFUL_TIMEOUT_S": "5",
    }
    issuer = DevIssuer(tmp_path / "issuer", issuer=ISSUER, audience=AUDIENCE)
    api, url = start_api_backend(logs, env)
    running = Stack(logs=logs, root=tmp_path, env=env, issuer=issuer, api=api, url=url)
    yield running
    for proc in running.procs:
        proc.stop()
    running.api.stop()
