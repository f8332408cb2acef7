"""A real deployment per test module: docker-compose.multi.yml with the host-network override, the images under
test (``CTLLM_IMAGE_<NAME>``, set by ``nox -s tests-deploy``), deployed and updated by scripts/deploy/.

Everything is bound to 127.0.0.1. Each deployment has its own compose project, its own image repository
prefix (the images under test are tagged into it, never the shared ``cloudtolocalllm/*`` tags) and its own
ports; the fixture removes its containers, volumes and tags whatever the outcome.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.devkit.edge_config import default_sites, pools, to_toml
from cloudtolocalllm.devkit.images.specs import tags

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMAGES = ("nginx-proxy", "static-site", "flutter-app", "api-backend", "certbot")
POOLED = ("static-site", "flutter-app", "api-backend")
ISSUER = "http://127.0.0.1/test-issuer"
AUDIENCE = "cloudtolocalllm-deploytest"
SITE_HOST = "deploy.test"
APP_HOST = "app.deploy.test"
# The version module of each Python image's package: a "v2" image differs from v1 by that file only.
# Debian's client (the engine's own version); a newer one without buildx may refuse `docker build`.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
VERSION_MODULE = {
    "static-site": "cloudtolocalllm.static_site.version",
    "flutter-app": "cloudtolocalllm.static_site.version",
    "api-backend": "cloudtolocalllm.bridge_api.version",
}


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _exists(image: str) -> bool:
    return bool(docker("image", "inspect", "--format", "{{.Id}}", image, check=False).strip())


@functools.cache
def image_under_test(image: str) -> str:
    """``CTLLM_IMAGE_<NAME>`` from the nox session, else this working tree's build (``nox -s build-<image>``).

    In a working tree where commits land while the images build, the commit tag the session names may not
    be the one the build used; the package-version tag the same build set is used then (and said so)."""
    name = os.environ.get(f"CTLLM_IMAGE_{image.upper().replace('-', '_')}") or str(tags(image)[1])
    if _exists(name):
        return name
    version_tag = str(tags(image)[0])
    if _exists(version_tag):
        print(f"\n{name} does not exist (HEAD moved since the build?): testing {version_tag}")
        return version_tag
    pytest.fail(f"{name} is not built: run `nox -s tests-deploy` (or `nox -s build-{image}` first)")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _below_ephemeral_range() -> range:
    """Ports the kernel never picks as the source port of an outgoing connection. The load sends thousands
    of connections: a service restarted on an ephemeral port could find it taken by one of them."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return range(max(low - 12000, 1024), low - 2)


_taken: set[int] = set()


def free_port(pair: bool = False) -> int:
    """A free port (an even one with its odd neighbour free too when ``pair``: a service's two instance ports
    on the host network), never handed out twice by one test run."""
    candidates = _below_ephemeral_range()
    for _ in range(1000):
        port = secrets.choice(candidates) & ~1
        ports = (port, port + 1) if pair else (port,)
        if not _taken.intersection(ports) and all(_free(p) for p in ports):
            _taken.update(ports)
            return port
    raise AssertionError("no free port")


def wait_for(predicate: object, what: str, timeout: float = 120, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def edge_toml(
    http_port: int, instances: dict[str, list[str]], https_port: int | None = None, address: str = "127.0.0.1"
) -> str:
    """The edge's configuration for a test deployment: the edge's own sites on deploy.test (the app's also on
    127.0.0.1), no cache, limits no test reaches."""
    unlimited = {"rate": 100000, "burst": 100000}
    return to_toml(
        {
            "domain": SITE_HOST,
            "listen": {
                "addresses": [address],
                "http_port": http_port,
                "https_port": https_port,
                "public_https_port": https_port,
            },
            "tls": {"enabled": https_port is not None},
            "nginx": {"worker_processes": "2"},
            # Every request reaches the service: the edge's cache must not hide an outage.
            "cache": {"enabled": False},
            "rate_limits": {"api": unlimited, "general": unlimited},
            "health_checks": {"interval": 1, "timeout": 2, "fall": 2, "rise": 2},
            "upstreams": pools(instances),
            "sites": default_sites({"app": ["127.0.0.1"]}),
        }
    )


@dataclass
class Deployment:
    root: Path
    project: str
    prefix: str
    env: dict[str, str]
    http_port: int
    issuer: DevIssuer
    log: Path
    v2: dict[str, str] = field(default_factory=dict)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def script(
        self, name: str, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """One of scripts/deploy/*.sh, as a user runs it from the repository root."""
        result = subprocess.run(
            [f"./scripts/deploy/{name}", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with self.log.open("a") as log:
            log.write(f"$ {name} {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(
                f"{name} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def compose(self, *args: str, production_file_only: bool = False) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        argv = ["docker-compose", *args]
        if production_file_only:  # the seed's commands: `docker-compose -f docker-compose.multi.yml ...`
            env.pop("COMPOSE_FILE")
            argv = ["docker-compose", "-f", "docker-compose.multi.yml", *args]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)

    def image(self, service: str, tag: str = "latest") -> str:
        return f"{self.prefix}/{service}:{tag}"

    def running(self, service: str) -> list[dict[str, object]]:
        ids = docker(
            "ps", "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).split()  # fmt: skip
        return json.loads(docker("inspect", *ids)) if ids else []

    def run_tag(self, service: str, tag: str) -> None:
        """Make ``service`` run its image tagged ``tag`` (an update only if it runs another one), so a test can
        start from the state it needs whatever the tests before it left."""
        wanted = docker("image", "inspect", "-f", "{{.Id}}", self.image(service, tag)).strip()
        if [container["Image"] for container in self.running(service)] == [wanted]:
            return
        docker("tag", self.image(service, tag), self.image(service))
        self.script("update-service.sh", service)

    def service_health(self, service: str) -> dict[str, object]:
        """/health of the one running container of ``service``, asked directly on its own port."""
        (container,) = self.running(service)
        env = dict(item.split("=", 1) for item in container["Config"]["Env"])  # type: ignore[index]
        port = env[env["SERVICE_PORT_VARIABLE"]]
        return dict(httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json())

    def token(self, user: str = "alice") -> str:
        return self.issuer.mint(user, ttl_s=3600)

    def edge_status(self) -> dict[str, object]:
        port = self.env["EDGE_ADMIN_PORT"]
        return dict(httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json())

    def pool(self, service: str) -> list[str]:
        upstreams = self.edge_status()["upstreams"]
        return [u["instance"] for u in upstreams if u["pool"] == service]  # type: ignore[attr-defined,index]


def trusted_issuer(root: Path) -> tuple[DevIssuer, Path]:
    """A signing key on the host (tests mint tokens with it) and a folder holding only its public JWKS, to mount
    at ``/issuer`` in api-backend: production images have no dev issuer, they trust the keys OIDC_JWKS_FILE
    names. The folder and file belong to the services' user (the tests run as root)."""
    issuer = DevIssuer(root / "issuer-key", issuer=ISSUER, audience=AUDIENCE)
    public = root / "issuer"
    public.mkdir()
    (public / "jwks.json").write_text(json.dumps(issuer.jwks()))
    for path in (public, public / "jwks.json"):
        os.chown(path, 65532, 65532)
    return issuer, public


def write_config(root: Path, edge: str, domains_env: str = "") -> Path:
    """The deployment's settings folder (api-backend trusts the test issuer's JWKS, mounted at /issuer; certbot's
    domains; the app's config.json)."""
    config = root / "config"
    config.mkdir()
    (config / "auth0.env").write_text(
        f"OIDC_ISSUER={ISSUER}\nOIDC_AUDIENCE={AUDIENCE}\nOIDC_JWKS_FILE=/issuer/jwks.json\n"
    )
    (config / "domains.env").write_text(f"CERTBOT_DOMAINS={SITE_HOST}\n{domains_env}")
    (config / "app-config.json").write_text(json.dumps({"issuer": ISSUER, "clientId": "deploytest", "apiBase": ""}))
    (config / "edge.toml").write_text(edge)
    return config


def without_published_ports(root: Path) -> Path:
    """docker-compose.multi.yml, the same but for nginx-proxy's published ports (see host-network.yml). Its
    relative paths are all behind variables the tests set, so the copy may live in the test's folder."""
    text = (ROOT / "docker-compose.multi.yml").read_text()
    block = '    ports:\n      - "80:80"\n      - "443:443"\n'
    assert text.count(block) == 1, "nginx-proxy's ports changed: update the deploy tests"
    target = root / "docker-compose.multi.yml"
    target.write_text(text.replace(block, ""))
    return target


def build_v2(source: str, target: str, module: str, root: Path) -> None:
    """``source`` with its package's version file replaced: /health reports ``2.0.0-deploytest``."""
    path = docker(
        "run", "--rm", "--network=none", "--entrypoint=python3", source,
        "-c", f"import {module} as v; print(v.__file__)",
    ).strip()  # fmt: skip
    context = root / f"v2-{target.rsplit('/', 1)[1].replace(':', '-')}"
    context.mkdir()
    (context / "version.py").write_text('__version__ = "2.0.0-deploytest"\n')
    (context / "Dockerfile").write_text(f"FROM {source}\nCOPY version.py {path}\n")
    docker("build", "--quiet", "--tag", target, str(context))


def remove_project(project: str, prefix: str, env: dict[str, str]) -> None:
    subprocess.run(
        ["docker-compose", "--profile", "ssl-setup", "down", "--volumes", "--remove-orphans", "--timeout", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    leftover = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}", check=False).split()
    if leftover:
        docker("rm", "-f", *leftover, check=False)
    tags = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={prefix}/*", check=False)
    for tag in tags.split():
        docker("rmi", tag, check=False)


@contextlib.contextmanager
def deployed(
    root: Path,
    *,
    http_port: int | None = None,
    https_port: int | None = None,
    domains_env: str = "",
    override: str = "",
    deploy_args: tuple[str, ...] = (),
    v2: bool = True,
) -> Iterator[Deployment]:
    """Deployed with ``deploy-multi-container.sh`` on the images under test (and ``v2`` images next to them);
    ``override`` is more compose YAML for the services (indented under ``services:``)."""
    if not os.environ.get("DOCKER_HOST"):
        pytest.fail("DOCKER_HOST is not set: run `nox -s tests-deploy`, or export the engine's DOCKER_HOST")
    suffix = secrets.token_hex(4)
    project, prefix = f"ctllmdeploy{suffix}", f"ctllm-deploytest-{suffix}"
    http_port = http_port or free_port()
    ports = {service: free_port(pair=True) for service in POOLED}
    loopback_pairs = {service: [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"] for service, port in ports.items()}
    config = write_config(root, edge_toml(http_port, loopback_pairs, https_port), domains_env)
    issuer, issuer_dir = trusted_issuer(root)
    compose_file = without_published_ports(root)
    override_file = root / "test-override.yml"
    override_file.write_text(f"services:\n  api-backend:\n    volumes:\n      - {issuer_dir}:/issuer:ro\n{override}")
    env = {
        **os.environ,
        "COMPOSE_FILE": os.pathsep.join([str(compose_file), str(HERE / "host-network.yml"), str(override_file)]),
        "COMPOSE_PROJECT_NAME": project,
        "CLOUDTOLOCALLLM_IMAGES": prefix,
        "CLOUDTOLOCALLLM_CONFIG_DIR": str(config),
        "CLOUDTOLOCALLLM_CERTBOT_DIR": str(root / "certbot"),
        "EDGE_ADMIN_PORT": str(free_port()),
        "DEPLOY_HEALTH_TIMEOUT_S": "300",  # two cores shared with other test runs
        **{f"{service.upper().replace('-', '_')}_PORT": str(port) for service, port in ports.items()},
    }
    log = root / "deploy.log"
    deployment = Deployment(root, project, prefix, env, http_port, issuer, log)
    try:
        for image in IMAGES:
            docker("tag", image_under_test(image), deployment.image(image, "latest"))
            docker("tag", image_under_test(image), deployment.image(image, "v1"))
        if v2:
            for service, module in VERSION_MODULE.items():
                deployment.v2[service] = deployment.image(service, "v2")
                build_v2(image_under_test(service), deployment.v2[service], module, root)
        deployment.script("deploy-multi-container.sh", *deploy_args)
        yield deployment
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.write(log.read_text() if log.exists() else "")
            # Kept in the test's folder for a post-mortem (the containers are removed below).
            deployment.script("export-logs.sh", "--dir", str(root / "logs"), check=False)
        remove_project(project, prefix, env)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment shared by a test module. Each test first brings what it changes to the state it needs
    (``run_tag``), so the tests pass in any order or alone."""
    with deployed(tmp_path_factory.mktemp("deployment")) as running:
        yield running
