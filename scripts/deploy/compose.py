"""docker-compose and docker, as the deploy tool uses them: the project's containers, health, image tags.

Only the standard library: the tool runs with the server's own ``python3``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.multi.yml"
NONROOT = "65532:65532"


class DeployError(Exception):
    """A step failed; the message says what and what to look at."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} is not installed (Debian: apt-get install docker.io docker-compose)")
    return found


def run(argv: list[str], *, env: dict[str, str] | None = None, capture: bool = False, check: bool = True) -> str:
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip() if capture else ""
        raise DeployError(f"`{' '.join(argv[:4])} ...` failed ({result.returncode}){': ' + detail if detail else ''}")
    return result.stdout or ""


def docker(*args: str, capture: bool = True, check: bool = True) -> str:
    return run([os.environ.get("DOCKER", "") or _binary("docker"), *args], capture=capture, check=check)


@dataclass
class Container:
    """One running container of a compose service, from ``docker inspect``."""

    id: str
    name: str
    image_id: str
    created: str
    env: dict[str, str]
    network_mode: str
    networks: dict[str, Any]
    health: str | None

    @classmethod
    def inspect(cls, container_ids: list[str]) -> list[Container]:
        if not container_ids:
            return []
        out = []
        for data in json.loads(docker("inspect", *container_ids)):
            env = dict(item.split("=", 1) for item in data["Config"]["Env"] or [] if "=" in item)
            state = data["State"]
            out.append(
                cls(
                    id=data["Id"],
                    name=data["Name"].lstrip("/"),
                    image_id=data["Image"],
                    created=data["Created"],
                    env=env,
                    network_mode=data["HostConfig"]["NetworkMode"],
                    networks=data["NetworkSettings"]["Networks"] or {},
                    health=(state.get("Health") or {}).get("Status") if state["Running"] else "exited",
                )
            )
        return sorted(out, key=lambda c: c.created)

    @property
    def host_network(self) -> bool:
        return self.network_mode == "host"

    @property
    def port(self) -> int:
        """The service's port: its port variable as ``docker run -e`` set it, else the image's default."""
        variable = self.env.get("SERVICE_PORT_VARIABLE")
        if variable is None:
            raise DeployError(f"{self.name} does not say which port it listens on (no SERVICE_PORT_VARIABLE)")
        defaults = dict(item.split("=", 1) for item in self.env.get("SERVICE_ENV", "").split() if "=" in item)
        return int(self.env.get(variable) or defaults.get(variable) or 8080)

    def address(self) -> str:
        """What the edge reaches it by: loopback and its port on the host network, else its short id (the
        alias Docker gives every container on a user-defined network), which stays right across restarts."""
        if self.host_network:
            return f"127.0.0.1:{self.port}"
        short = self.id[:12]
        for network in self.networks.values():
            if short in (network.get("Aliases") or []):
                return f"{short}:{self.port}"
        for network in self.networks.values():
            if network.get("IPAddress"):
                return f"{network['IPAddress']}:{self.port}"
        raise DeployError(f"{self.name} has no network address the edge could use")


class Compose:
    """``docker-compose`` on the multi-container file (or on ``COMPOSE_FILE`` when it is set)."""

    def __init__(self) -> None:
        self.binary = os.environ.get("DOCKER_COMPOSE", "") or _binary("docker-compose")
        self.dotenv = self._read_dotenv()

    def _read_dotenv(self) -> dict[str, str]:
        # The variables docker-compose itself takes from .env in the project directory (the first file's).
        first = os.environ.get("COMPOSE_FILE", "").split(os.pathsep)[0] or str(COMPOSE_FILE)
        path = (ROOT / first).parent / ".env"
        values: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#"):
                    values[name.strip()] = value.strip().strip("'\"")
        return values

    def variable(self, name: str, default: str) -> str:
        return os.environ.get(name) or self.dotenv.get(name) or default

    def argv(self, *args: str, profiles: tuple[str, ...] = ()) -> list[str]:
        files = [] if os.environ.get("COMPOSE_FILE") else ["-f", str(COMPOSE_FILE)]
        return [self.binary, *files, *(arg for p in profiles for arg in ("--profile", p)), *args]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, capture: bool = False, profiles: tuple[str, ...] = ()
    ) -> str:
        return run(self.argv(*args, profiles=profiles), env=env, capture=capture)

    def image(self, service: str) -> str:
        """The reference the compose file gives ``service`` (the same variables, the same defaults)."""
        prefix = self.variable("CLOUDTOLOCALLLM_IMAGES", "cloudtolocalllm")
        tag = self.variable(f"{service.upper().replace('-', '_')}_TAG", "latest")
        return f"{prefix}/{service}:{tag}"

    def config_dir(self) -> Path:
        return ROOT / self.variable("CLOUDTOLOCALLLM_CONFIG_DIR", "./config")

    def certbot_dir(self) -> Path:
        return ROOT / self.variable("CLOUDTOLOCALLLM_CERTBOT_DIR", "./certbot")

    def container_ids(self, service: str, profiles: tuple[str, ...] = ()) -> list[str]:
        return self("ps", "-q", service, capture=True, profiles=profiles).split()

    def running(self, service: str, profiles: tuple[str, ...] = ()) -> list[Container]:
        return [c for c in Container.inspect(self.container_ids(service, profiles)) if c.health != "exited"]


def image_id(reference: str) -> str | None:
    found = docker("image", "inspect", "--format", "{{.Id}}", reference, check=False).strip()
    return found or None


def wait_healthy(container: Container, timeout_s: float) -> None:
    """Until Docker reports the container ``healthy``; a container without a health check only has to run."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = json.loads(docker("inspect", container.id))[0]
        state = data["State"]
        if not state["Running"]:
            raise DeployError(f"{container.name} exited ({state['ExitCode']}); see `docker logs {container.name}`")
        health = state.get("Health")
        if health is None or health["Status"] == "healthy":
            return
        if health["Status"] == "unhealthy" or time.monotonic() > deadline:
            last = (health.get("Log") or [{}])[-1].get("Output", "").strip()
            raise DeployError(
                f"{container.name} is {health['Status']} after {timeout_s:.0f}s (last check: {last or 'none yet'})"
            )
        time.sleep(1)
