"""Bring the local stack up on loopback, print how to use it, and stop everything on Ctrl-C.

Embedded defaults only: api-backend with the development auth issuer (``DEV_AUTH=true``, keys in
``.dev/``) and its in-memory bridge registry; a bridge connected to it with a dev token; and, when no
Ollama answers on 127.0.0.1:11434, a real small model (SmolLM2-135M on llama.cpp, built once and cached
by ``scripts/local_model.py``) for the bridge to serve. Services join here as their packages land.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEV = ROOT / ".dev"
OLLAMA_URL = "http://127.0.0.1:11434"


@dataclass
class Service:
    name: str
    command: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60
    token: str | None = None  # sent with the health probe
    expect: bytes = b""  # the probe's body must contain this


def _answers(url: str, token: str | None = None, expect: bytes = b"") -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310 - loopback URLs only
            return bool(response.status == 200 and expect in response.read())
    except (urllib.error.URLError, OSError):
        return False


def _wait_healthy(service: Service, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + service.timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = DEV / "logs" / f"{service.name}.log"
            raise SystemExit(f"{service.name} exited with status {proc.returncode}; see {log.relative_to(ROOT)}")
        if _answers(service.health_url, service.token, service.expect):
            return
        time.sleep(0.2)
    raise SystemExit(f"{service.name} did not become healthy at {service.health_url} within {service.timeout_s:.0f}s")


def _local_model(args: argparse.Namespace) -> Service | None:
    """The model to serve: the user's own Ollama if it runs, else SmolLM2 on llama.cpp."""
    if _answers(OLLAMA_URL + "/api/version"):
        print(f"devstack: using the Ollama already running at {OLLAMA_URL}", file=sys.stderr)
        return None
    print("devstack: no Ollama on 127.0.0.1:11434; preparing the bundled small model", file=sys.stderr)
    # Builds llama.cpp once (minutes, with progress lines), then reuses the cached build.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "local_model.py"), "ensure"], check=True)
    port = str(args.model_port)
    return Service(
        "local-model",
        [sys.executable, str(ROOT / "scripts" / "local_model.py"), "serve", "--port", port],
        f"http://127.0.0.1:{port}/v1/models",
        timeout_s=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--model-port", type=int, default=8765)
    parser.add_argument("--user", default="dev-user", help="the dev user the bridge and token belong to")
    args = parser.parse_args()

    api_url = f"http://127.0.0.1:{args.api_port}"
    dev_env = {
        **os.environ,
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(DEV / "issuer"),
        "DEV_ISSUER_URL": f"{api_url}/dev-issuer",
    }
    running: list[tuple[Service, subprocess.Popen[bytes]]] = []

    def stop_all(*_: object) -> None:
        for _service, proc in reversed(running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _service, proc in reversed(running):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)

    logs = DEV / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def start(service: Service) -> None:
        # Each service logs (JSON lines) to its own file, so the terminal shows what to do, not noise.
        log = (logs / f"{service.name}.log").open("ab")
        proc = subprocess.Popen(service.command, env={**dev_env, **service.env}, stdout=log, stderr=subprocess.STDOUT)
        running.append((service, proc))
        _wait_healthy(service, proc)
        print(f"devstack: {service.name} is up", file=sys.stderr)

    def mint(ttl_s: int) -> str:
        return subprocess.run(
            [str(BIN / "cloudtolocalllm-dev-issuer"), "token", "--sub", args.user, "--ttl", str(ttl_s)],
            env=dev_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    model = _local_model(args)
    backend_url, backend_kind = OLLAMA_URL, "ollama"
    if model is not None:
        start(model)
        backend_url, backend_kind = f"http://127.0.0.1:{args.model_port}", "openai"

    start(
        Service(
            "api-backend",
            [str(BIN / "cloudtolocalllm-api-backend")],
            f"{api_url}/health",
            env={"API_PORT": str(args.api_port)},
        )
    )

    DEV.mkdir(exist_ok=True)
    token_file = DEV / "bridge-token"
    token_file.write_text(mint(12 * 3600))
    token_file.chmod(0o600)
    token = mint(3600)
    bridge = Service(
        "bridge",
        [
            str(BIN / "cloudtolocalllm-bridge"),
            "run",
            "--cloud",
            api_url,
            "--token-file",
            str(token_file),
            "--backend",
            backend_url,
            "--backend-kind",
            backend_kind,
            "--state-dir",
            str(DEV / "bridge"),
            "--name",
            "dev-bridge",
        ],
        f"{api_url}/api/bridge/status",
        token=token,
        expect=b'"name":"dev-bridge"',  # healthy once api-backend lists it for the dev user
    )
    start(bridge)
    print(
        f"""
CloudToLocalLLM dev stack is running (Ctrl-C stops everything it started).

  api-backend     {api_url}   (Ollama base URL: {api_url}/api/ollama, OpenAI: {api_url}/api/ollama/v1)
  bridge          dev-bridge -> {backend_url} ({backend_kind})
  bridge status   curl -H "Authorization: Bearer $TOKEN" {api_url}/api/bridge/status
  logs            .dev/logs/*.log (one JSON object per line)

A token for '{args.user}' (1 h; mint more with .venv/bin/cloudtolocalllm-dev-issuer token --sub {args.user}):

  export TOKEN={token}

Try it:

  .venv/bin/python - <<'PY'
import os, ollama
client = ollama.Client(host="{api_url}/api/ollama", headers={{"Authorization": "Bearer " + os.environ["TOKEN"]}})
model = client.list().models[0].model
for part in client.chat(model=model, messages=[{{"role": "user", "content": "Say hello"}}], stream=True):
    print(part.message.content, end="", flush=True)
print()
PY

  .venv/bin/python - <<'PY'
import os, openai
client = openai.OpenAI(base_url="{api_url}/api/ollama/v1", api_key=os.environ["TOKEN"])
model = client.models.list().data[0].id
answer = client.chat.completions.create(model=model, messages=[{{"role": "user", "content": "Say hello"}}])
print(answer.choices[0].message.content)
PY
""",
        flush=True,
    )
    while True:
        for service, proc in running:
            if proc.poll() is not None:
                print(f"devstack: {service.name} exited ({proc.returncode}); stopping the rest", file=sys.stderr)
                stop_all()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
