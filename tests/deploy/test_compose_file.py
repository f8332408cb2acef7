"""docker-compose.multi.yml itself, as production uses it: valid for docker-compose, hardened, and refused
clearly by the deploy script while its settings are missing. (The deployment tests run it for real.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

EXAMPLES = {
    "auth0.env": ROOT / "docker/compose/auth0.env.example",
    "domains.env": ROOT / "docker/compose/domains.env.example",
    "edge.toml": ROOT / "packages/edge/edge.example.toml",
    "app-config.json": ROOT / "docker/compose/app-config.json.example",
}
SERVICES = {"nginx-proxy", "static-site", "flutter-app", "api-backend", "certbot", "postgres"}
# Services that run as their image's own user, which owns their data volume.
IMAGE_USERS = {"postgres": "999:999"}


def _env(config: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "CLOUDTOLOCALLLM_"))}
    return {**env, "CLOUDTOLOCALLLM_CONFIG_DIR": str(config), "COMPOSE_PROJECT_NAME": "ctllmconfigcheck"}


def _config(config: Path) -> dict[str, Any]:
    """``docker-compose -f docker-compose.multi.yml config``, as data. docker-compose prints YAML; Debian's
    docker-compose brings PyYAML to the system Python, which turns it into JSON here."""
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.multi.yml", "config"],
        cwd=ROOT,
        env=_env(config),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    as_json = subprocess.run(
        ["/usr/bin/python3", "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=result.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(as_json.stdout))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    for name, example in EXAMPLES.items():
        shutil.copy(example, folder / name)
    return folder


def test_the_production_file_is_valid_with_the_example_settings(config_dir: Path) -> None:
    services = _config(config_dir)["services"]
    assert set(services) == SERVICES
    assert services["certbot"]["profiles"] == ["ssl-setup"]
    assert services["postgres"]["profiles"] == ["postgres"]
    api = services["api-backend"]
    assert api["environment"]["API_DATA_DIR"] == "/var/lib/cloudtolocalllm"
    assert any(v.startswith("api-data:/var/lib/cloudtolocalllm") or v.endswith(":/var/lib/cloudtolocalllm:rw")
               for v in api["volumes"])  # fmt: skip
    assert services["api-backend"]["environment"]["AUTH0_DOMAIN"] == "your-tenant.eu.auth0.com"
    assert "CERTBOT_DOMAINS" in services["certbot"]["environment"]
    assert {str(port.get("published", "")) for port in services["nginx-proxy"]["ports"]} == {"80", "443"}
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["user"] == IMAGE_USERS.get(name, "65532:65532"), name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["restart"] == "unless-stopped", name
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "5"}}, name
        assert service["mem_limit"] and service["cpus"] and service["pids_limit"], name
        assert "/tmp" in {mount.split(":")[0] for mount in service["tmpfs"]}, name  # noqa: S108 - in the container
        assert "container_name" not in service, name  # a second instance must be possible
        if name != "certbot":  # certbot has no port; its image checks that certbot starts
            assert service["healthcheck"]["interval"], name
    # "source:target:mode" strings in docker-compose 1.29's output
    edge_mounts = {
        target: (source, mode) for source, target, mode in (v.split(":") for v in services["nginx-proxy"]["volumes"])
    }
    assert edge_mounts["/etc/letsencrypt"][1] == "ro"
    assert edge_mounts["/etc/cloudtolocalllm/edge.toml"] == (str(config_dir / "edge.toml"), "ro")


def test_the_deploy_script_names_the_missing_settings(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    result = subprocess.run(
        ["./scripts/deploy/deploy-multi-container.sh"],
        cwd=ROOT,
        env=_env(tmp_path / "config"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    for name, example in EXAMPLES.items():
        assert f"cp {example.relative_to(ROOT)} " in result.stderr
        assert name in result.stderr
