"""The production topology: the services on the compose network, the edge reaching them by name
(``static-site:8080``) and, during an update, by each container's short id (the alias Docker gives every
container on a user-defined network). No host network, no override but the api-backend's dev issuer and
nginx-proxy's published ports left out (test traffic never leaves the containers this test creates).

A probe container on the same network sends requests to ``nginx-proxy:80`` without pause while static-site
and flutter-app are updated with ``--no-downtime``, and reports what failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    APP_HOST,
    DOCKER,
    IMAGES,
    ROOT,
    SITE_HOST,
    docker,
    edge_toml,
    image_under_test,
    remove_project,
    trusted_issuer,
    without_published_ports,
    write_config,
)

PROBE = f"""
import json, sys, threading, time, urllib.request
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
hosts = {{"static-site": "{SITE_HOST}", "flutter-app": "{APP_HOST}"}}
tally = {{name: {{"ok": 0, "failed": []}} for name in hosts}}
while not stop.is_set():
    for name, host in hosts.items():
        request = urllib.request.Request("http://nginx-proxy/", headers={{"Host": host}})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                good = response.status == 200 and b"<html" in response.read()
                problem = None if good else "status %d" % response.status
        except Exception as exc:
            problem = repr(exc)
        if problem is None:
            tally[name]["ok"] += 1
        else:
            tally[name]["failed"].append(problem)
            time.sleep(0.05)
    if sum(t["ok"] for t in tally.values()) == 20:
        print("probing", flush=True)
print(json.dumps(tally), flush=True)
"""


@pytest.fixture
def network_deployment(tmp_path: Path) -> Iterator[dict[str, str]]:
    if not os.environ.get("DOCKER_HOST"):
        pytest.fail("DOCKER_HOST is not set: run `nox -s tests-deploy`, or export the engine's DOCKER_HOST")
    suffix = secrets.token_hex(4)
    project, prefix = f"ctllmnet{suffix}", f"ctllm-nettest-{suffix}"
    names = {service: [f"{service}:8080"] for service in ("static-site", "flutter-app", "api-backend")}
    config = write_config(tmp_path, edge_toml(80, names, address="0.0.0.0"))
    _, issuer_dir = trusted_issuer(tmp_path)
    override = tmp_path / "issuer.yml"
    override.write_text(f"services:\n  api-backend:\n    volumes:\n      - {issuer_dir}:/issuer:ro\n")
    env = {
        **os.environ,
        "COMPOSE_FILE": os.pathsep.join([str(without_published_ports(tmp_path)), str(override)]),
        "COMPOSE_PROJECT_NAME": project,
        "CLOUDTOLOCALLLM_IMAGES": prefix,
        "CLOUDTOLOCALLLM_CONFIG_DIR": str(config),
        "CLOUDTOLOCALLLM_CERTBOT_DIR": str(tmp_path / "certbot"),
        "DEPLOY_HEALTH_TIMEOUT_S": "300",
    }
    for image in IMAGES:
        docker("tag", image_under_test(image), f"{prefix}/{image}:latest")
    try:
        yield {**env, "ROOT": str(tmp_path)}
    finally:
        remove_project(project, prefix, env)


def _script(env: dict[str, str], *argv: str) -> str:
    result = subprocess.run(
        [f"./scripts/deploy/{argv[0]}", *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_no_downtime_updates_on_the_compose_network(network_deployment: dict[str, str]) -> None:
    env = network_deployment
    deployed = _script(env, "deploy-multi-container.sh")
    # The edge's pools name containers by their short id on the compose network.
    assert re.search(r"edge pool static-site: [0-9a-f]{12}:8080\n", deployed), deployed
    network = f"{env['COMPOSE_PROJECT_NAME']}_default"
    probe = subprocess.Popen(
        [
            DOCKER, "run", "--rm", "-i", f"--network={network}", "--read-only", "--user=65532:65532",
            "--entrypoint=python3", image_under_test("static-site"), "-c", PROBE,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert probe.stdout is not None
        assert probe.stdout.readline().strip() == "probing", probe.stderr.read() if probe.stderr else ""
        for service in ("static-site", "flutter-app"):
            updated = _script(env, "update-service.sh", service, "--no-downtime")
            assert re.search(rf"edge pool {service}: [0-9a-f]{{12}}:8080 [0-9a-f]{{12}}:8080\n", updated), updated
        out, err = probe.communicate(timeout=120)  # closing stdin stops the probe
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait(30)
    tally = json.loads(out.strip().splitlines()[-1])
    print(
        "\ncompose network, --no-downtime:",
        json.dumps({k: {"ok": v["ok"], "failed": len(v["failed"])} for k, v in tally.items()}),
    )
    for service in ("static-site", "flutter-app"):
        assert tally[service]["failed"] == [], tally[service]["failed"][:5]
        assert tally[service]["ok"] > 20, err
