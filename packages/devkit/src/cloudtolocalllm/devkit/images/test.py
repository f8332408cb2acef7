"""Test one image as the seed's containers run: read-only root, host network on loopback, no capabilities,
non-root; healthy, ``/health`` and one real request answered."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping

from cloudtolocalllm.devkit.edge_config import pools, write_edge_config
from cloudtolocalllm.devkit.images.engine import cache_dir, docker, docker_binary, docker_env, image_exists
from cloudtolocalllm.devkit.images.net import free_port, http_get
from cloudtolocalllm.devkit.images.specs import tags


def wait_healthy(env: Mapping[str, str], container: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        state = json.loads(docker(env, "inspect", "--format", "{{json .State}}", container, capture=True))
        status = (state.get("Health") or {}).get("Status", "")
        if status == "healthy":
            return
        if not state.get("Running"):
            raise AssertionError(f"{container} exited with {state.get('ExitCode')}")
        time.sleep(0.25)
    raise AssertionError(f"{container} not healthy after {timeout:.0f}s (last status {status!r})")


def main_process_uid(env: Mapping[str, str], container: str) -> int:
    status = docker(env, "exec", container, "cat", "/proc/1/status", capture=True)
    real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    return int(real_uid)


def root_is_read_only(env: Mapping[str, str], container: str) -> bool:
    result = subprocess.run(
        [docker_binary(), "exec", container, "touch", "/probe"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode != 0


@contextlib.contextmanager
def running(env: Mapping[str, str], image: str, run_args: list[str], command: list[str]) -> Iterator[str]:
    """A container of ``image`` under the test rules: read-only root, host network, no capabilities."""
    name = f"ctllm-test-{image.rsplit('/', 1)[-1].split(':', 1)[0]}-{os.getpid()}"
    docker(
        env,
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--network=host",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--health-interval=1s",
        "--health-start-period=30s",
        *run_args,
        image,
        *command,
        capture=True,
    )
    try:
        yield name
    except BaseException:
        docker(env, "logs", "--tail", "50", name, check=False)
        raise
    finally:
        docker(env, "rm", "--force", name, check=False, capture=True)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check_health(base_url: str, service: str) -> None:
    status, _, body = http_get(f"{base_url}/health")
    expect(status == 200, f"/health answered {status}")
    expect(json.loads(body).get("service") in (service, None), f"/health names another service: {body!r}")


def _test_api_backend(port: int) -> tuple[list[str], Callable[[], None]]:
    base_url = f"http://127.0.0.1:{port}"
    # Production-style settings: an Auth0 tenant that is never contacted (no request below carries a token).
    env = [
        "API_HOST=127.0.0.1",
        f"API_PORT={port}",
        "AUTH0_DOMAIN=tenant.invalid",
        "AUTH0_AUDIENCE=https://api.invalid",
    ]

    def check() -> None:
        _check_health(base_url, "api-backend")
        status, headers, _ = http_get(f"{base_url}/api/bridge/status")
        expect(status == 401, f"/api/bridge/status without a token answered {status}, not 401")
        expect("Bearer" in headers.get("www-authenticate", ""), f"no Bearer challenge in {headers}")

    tmpfs = ["--tmpfs=/tmp:size=16m", "--tmpfs=/var/lib/cloudtolocalllm:uid=65532,gid=65532,size=16m"]
    return [f"--env={item}" for item in env] + tmpfs, check


def _test_static_server(port: int, service: str) -> tuple[list[str], Callable[[], None]]:
    base_url = f"http://127.0.0.1:{port}"

    def check() -> None:
        _check_health(base_url, service)
        status, headers, body = http_get(f"{base_url}/", {"Accept": "text/html"})
        expect(status == 200 and headers.get("content-type", "").startswith("text/html"), f"/ answered {status}")
        expect(b"<html" in body.lower() or b"<!doctype" in body.lower(), "/ is not an HTML page")
        if service == "flutter-app":  # an app route gets the app's index.html (the SPA fallback)
            status, _, route_body = http_get(f"{base_url}/chat/42", {"Accept": "text/html"})
            expect(status == 200 and route_body == body, f"/chat/42 answered {status}, not the app")
        else:
            status, _, _ = http_get(f"{base_url}/docs/", {"Accept": "text/html"})
            expect(status == 200, f"/docs/ answered {status}")

    return ["--env=STATIC_HOST=127.0.0.1", f"--env=STATIC_PORT={port}", "--tmpfs=/tmp:size=16m"], check


def _test_nginx_proxy(port: int) -> tuple[list[str], Callable[[], None]]:
    http_port, https_port, idle_port = free_port(), free_port(), free_port()
    config = cache_dir() / "image-tests" / f"edge-{os.getpid()}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    ports = {"http_port": http_port, "https_port": https_port, "public_https_port": https_port}
    idle = pools({pool: [f"127.0.0.1:{idle_port}"] for pool in ("static-site", "flutter-app", "api-backend")})
    write_edge_config(config, {"listen": {"addresses": ["127.0.0.1"], **ports}, "upstreams": idle}, "the image test")
    config.chmod(0o644)

    def check() -> None:
        _check_health(f"http://127.0.0.1:{port}", "edge")
        status, headers, _ = http_get(f"http://127.0.0.1:{http_port}/health", {"Host": "localhost"})
        expect(status == 200, f"nginx's /health answered {status}")
        # A real route: the pool has no live instance, so the edge answers 503 itself, with its headers.
        status, headers, _ = http_get(f"http://127.0.0.1:{http_port}/", {"Host": "localhost"})
        expect(status in (301, 308), f"plain HTTP was not redirected to HTTPS ({status})")
        expect(headers.get("x-frame-options") is not None, f"no security headers on the redirect: {headers}")

    run_args = [
        f"--env=EDGE_ADMIN_PORT={port}",
        "--env=EDGE_CONFIG=/etc/cloudtolocalllm/edge.toml",
        f"--volume={config}:/etc/cloudtolocalllm/edge.toml:ro",
        "--tmpfs=/run/cloudtolocalllm-edge:size=64m,uid=65532,gid=65532,mode=0700",
        "--tmpfs=/tmp:size=16m",
    ]
    return run_args, check


TESTS: dict[str, Callable[[int], tuple[list[str], Callable[[], None]]]] = {
    "api-backend": _test_api_backend,
    "static-site": lambda port: _test_static_server(port, "static-site"),
    "flutter-app": lambda port: _test_static_server(port, "flutter-app"),
    "nginx-proxy": _test_nginx_proxy,
}


def test(image: str) -> None:
    tag = tags(image)[1]  # this commit's build
    with docker_env() as env:
        expect(image_exists(env, tag), f"{tag} not built; run nox -s build-{image}")
        if image not in TESTS:  # certbot: no port; it must still start read-only as non-root
            output = docker(
                env, "run", "--rm", "--read-only", "--network=none", "--cap-drop=ALL",
                "--security-opt=no-new-privileges", "--tmpfs=/tmp:size=16m", "--entrypoint=sh", tag,
                "-c", "id -u && certbot --version",
                capture=True,
            )  # fmt: skip
            certbot_uid = output.splitlines()[0]
            expect(certbot_uid != "0", "certbot runs as root")
            print(f"images: {tag}: uid {certbot_uid}, {output.splitlines()[-1]}")
            return
        port = free_port()
        run_args, check = TESTS[image](port)
        with running(env, tag, run_args, []) as container:
            wait_healthy(env, container)
            check()
            uid = main_process_uid(env, container)
            expect(uid != 0, f"{container}'s main process runs as root")
            expect(root_is_read_only(env, container), f"{container} could write to its root filesystem")
            print(f"images: {tag}: healthy, /health and a real request answered, uid {uid}, read-only root")
