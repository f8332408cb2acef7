"""Start every service that exists in this checkout on loopback, print how to use them, stop on Ctrl-C.

Each service runs as its own process with the embedded development defaults (``DEV_AUTH=true``, keys in
``.dev/``, in-memory state). Services are added here as their packages land.
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
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Service:
    name: str
    command: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    module: str = ""  # only started when this module is installed

    def available(self) -> bool:
        return not self.module or find_spec(self.module) is not None


def _services(args: argparse.Namespace) -> list[Service]:
    issuer = f"http://127.0.0.1:{args.issuer_port}/dev-issuer"
    return [
        Service(
            "dev-issuer",
            [str(BIN / "cloudtolocalllm-dev-issuer"), "serve", "--port", str(args.issuer_port)],
            f"http://127.0.0.1:{args.issuer_port}/health",
            env={"DEV_ISSUER_URL": issuer},
        ),
    ]


def _wait_healthy(service: Service, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{service.name} exited with status {proc.returncode}; see its log lines above")
        try:
            with urllib.request.urlopen(service.health_url, timeout=1) as response:  # noqa: S310 - loopback URL only
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"{service.name} did not become healthy at {service.health_url} within {timeout_s:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--issuer-port", type=int, default=8081)
    args = parser.parse_args()

    base_env = {
        **os.environ,
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(ROOT / ".dev" / "issuer"),
        "DEV_ISSUER_URL": f"http://127.0.0.1:{args.issuer_port}/dev-issuer",
    }
    running: list[tuple[Service, subprocess.Popen[bytes]]] = []

    def stop_all(*_: object) -> None:
        for _service, proc in reversed(running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _service, proc in running:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    for service in _services(args):
        if not service.available():
            continue
        proc = subprocess.Popen(service.command, env={**base_env, **service.env})
        running.append((service, proc))
        _wait_healthy(service, proc)
        print(f"devstack: {service.name} is up ({service.health_url})", file=sys.stderr)

    token = subprocess.run(
        [str(BIN / "cloudtolocalllm-dev-issuer"), "token", "--sub", "dev-user"],
        env=base_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        "\nCloudToLocalLLM dev stack is running. Ctrl-C stops everything it started.\n"
        f"  dev issuer: {base_env['DEV_ISSUER_URL']}/.well-known/openid-configuration\n"
        f"  a token for user 'dev-user' (valid 1 h):\n    {token}\n",
        flush=True,
    )
    while True:
        for service, proc in running:
            if proc.poll() is not None:
                print(
                    f"devstack: {service.name} exited ({proc.returncode}); stopping the rest", file=sys.stderr
                )
                stop_all()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
