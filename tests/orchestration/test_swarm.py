"""deploy/swarm/stack.yml on a real single-node Swarm: every service healthy, hardened, secrets applied, the edge
routing the domains, api-backend scaled to three and updated under continuous requests without one failure.

The stack runs in a private engine inside a network namespace of its own (see swarm.py). This machine's kernel
has no IPVS, so Swarm's virtual IPs cannot work: the stack runs with ``ENDPOINT_MODE=dnsrr`` and the requests
that measure the rolling update go through a DNS-following load balancer (lb.conf, swarm-test.yml) standing in
for the virtual IP. The images come from the engine that built them (``nox -s build-<image>``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtolocalllm.devkit.images import specs
from cloudtolocalllm.devkit.images.base import ensure_base
from cloudtolocalllm.devkit.images.engine import image_exists

from .swarm import HERE, ROOT, PrivateSwarm, SwarmError, source_engine

pytestmark = pytest.mark.slow

STACK = "ctllm"
STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
EDGE_CONFIG = ROOT / "deploy" / "swarm" / "edge.toml"
APP_CONFIG = ROOT / "docker" / "compose" / "app-config.json.example"
DOMAIN = "cloudtolocalllm.online"  # deploy/swarm/edge.toml's domain; the names never leave the namespace
IMAGES = ("api-backend", "nginx-proxy", "static-site", "flutter-app")
REDIS_IMAGE = "ctllm-test/redis:local"
POSTGRES_IMAGE = "ctllm-test/postgres:local"
# The issuer of the tokens the tests mint; api-backend trusts its JWKS file (no dev issuer in the image).
TEST_ISSUER = "https://issuer.swarm.test/"
TEST_AUDIENCE = "cloudtolocalllm-swarmtest"
POSTGRES_PASSWORD = "swarm-test-password"  # a throwaway cluster inside the test's namespace
API = f"{STACK}_api-backend"


def _deploy_env(tags: dict[str, str]) -> dict[str, str]:
    return {
        "CTLLM_API_TAG": tags["api-backend"],
        "CTLLM_EDGE_TAG": tags["nginx-proxy"],
        "CTLLM_STATIC_TAG": tags["static-site"],
        "API_REPLICAS": "1",
        "ENDPOINT_MODE": "dnsrr",  # no IPVS in this kernel: no virtual IPs
        "REDIS_IMAGE": REDIS_IMAGE,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "CERTBOT_REPLICAS": "0",  # nothing here can reach an ACME server
        "LB_CONF": str(HERE / "lb.conf"),
    }


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSwarm]:
    # The images under test: this commit's build as the nox session names it, else each package's version.
    tags = {
        name: os.environ.get(f"CTLLM_IMAGE_{name.upper().replace('-', '_')}", "").rpartition(":")[2]
        or specs.package_version(specs.IMAGES[name].package)
        for name in IMAGES
    }
    engine = PrivateSwarm(tmp_path_factory.mktemp("swarm"), f"ctllm-swarm-{os.getpid()}")
    try:
        engine.start()
        with source_engine() as source:
            names = [f"{specs.REPOSITORY}/{name}:{tag}" for name, tag in tags.items()]
            missing = [name for name in names if not image_exists(source, name)]
            if missing:
                built = ", ".join(f"build-{name.split('/')[1].split(':')[0]}" for name in missing)
                raise SwarmError(f"images not built: {missing}; run nox -s {built}")
            engine.load_images(source, names)
        base = ensure_base(engine.env)
        engine.build_redis_image(base, REDIS_IMAGE)
        engine.build_postgres_image(base, POSTGRES_IMAGE)

        node = engine.docker("node", "ls", "--quiet")
        engine.docker("node", "update", "--label-add", "cloudtolocalllm.edge=true", node)
        engine.docker("node", "update", "--label-add", "cloudtolocalllm.database=true", node)
        secrets = {
            "cloudtolocalllm_auth0_domain": "tenant.invalid",
            "cloudtolocalllm_auth0_audience": "https://api.invalid",
            "cloudtolocalllm_postgres_password": POSTGRES_PASSWORD,
            "cloudtolocalllm_database_url": (
                f"postgresql://cloudtolocalllm:{POSTGRES_PASSWORD}@postgres:5432/cloudtolocalllm"
            ),
        }
        for name, value in secrets.items():
            secret_file = engine.state / name
            secret_file.write_text(value)
            engine.docker("secret", "create", name, str(secret_file))
            secret_file.unlink()
        engine.docker("config", "create", "cloudtolocalllm_edge_v1", str(EDGE_CONFIG))
        engine.docker("config", "create", "cloudtolocalllm_app_config_v1", str(APP_CONFIG))
        engine.docker(
            "stack", "deploy", "--compose-file", str(STACK_FILE), "--compose-file", str(HERE / "swarm-test.yml"),
            STACK, env=_deploy_env(tags),
        )  # fmt: skip
        engine.wait_converged()
        _wait_for_edge(engine)
        yield engine
    finally:
        _remove_stack(engine)
        engine.stop()


def _wait_for_edge(engine: PrivateSwarm, timeout: float = 120) -> None:
    """Until the edge routes to every pool: its health checks see a task only after Swarm started it."""
    probes = [(DOMAIN, "/", 200), (f"app.{DOMAIN}", "/", 200), (f"app.{DOMAIN}", "/api/bridge/status", 401)]
    deadline = time.monotonic() + timeout
    answers: list[int] = []
    while time.monotonic() < deadline:
        answers = [_get(engine, f"https://127.0.0.1{path}", host=host)[0] for host, path, _ in probes]
        if answers == [expected for _, _, expected in probes]:
            return
        time.sleep(1)
    raise SwarmError(f"the edge does not route every pool after {timeout:.0f}s: {answers}")


def _remove_stack(engine: PrivateSwarm) -> None:
    if not engine.socket.exists():
        return
    try:
        engine.docker("stack", "rm", STACK, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and engine.docker("ps", "--all", "--quiet"):
            time.sleep(1)
    except SwarmError as exc:
        print(f"stack removal: {exc}", file=sys.stderr)


def _get(engine: PrivateSwarm, url: str, host: str | None = None) -> tuple[int, dict[str, str]]:
    status, headers, _ = _get_body(engine, url, host)
    return status, headers


def _get_body(
    engine: PrivateSwarm,
    url: str,
    host: str | None = None,
    token: str | None = None,
    *,
    method: str = "GET",
    json_body: str | None = None,
) -> tuple[int, dict[str, str], str]:
    command = [sys.executable, str(HERE / "netclient.py"), "get", url, *(["--host", host] if host else [])]
    command += ["--method", method, *(["--json", json_body] if json_body is not None else [])]
    answer = json.loads(engine.in_netns(*command, env={"CTLLM_TEST_TOKEN": token} if token else None))
    return answer["status"], answer["headers"], answer["body"]


def _lb_upstreams(engine: PrivateSwarm) -> list[str]:
    """The load balancer's log: the upstream address list of every request (``a, b`` when it retried)."""
    (task,) = engine.running_tasks(f"{STACK}_lb")
    logs = engine.docker("logs", task["Id"])
    return re.findall(r"^lb status=\d+ upstream=(.+?) upstream_status=", logs, flags=re.MULTILINE)


def _scale_api(engine: PrivateSwarm, replicas: int) -> None:
    engine.docker("service", "scale", "--detach=false", f"{API}={replicas}")
    engine.wait_converged()


def test_every_service_runs_healthy_read_only_and_not_as_root(swarm: PrivateSwarm) -> None:
    services = swarm.services()
    for name in ("nginx-proxy", "static-site", "flutter-app", "api-backend", "redis", "postgres"):
        running, _, desired = services[f"{STACK}_{name}"].partition("/")
        assert running == desired and int(desired) >= 1, services
        for task in swarm.running_tasks(f"{STACK}_{name}"):
            assert task["HostConfig"]["ReadonlyRootfs"] is True, name
            assert "ALL" in (task["HostConfig"]["CapDrop"] or []), name
            assert task["Config"]["User"] not in ("", "0", "root"), name
            assert task["State"]["Health"]["Status"] == "healthy", name  # every service has a health check


def test_auth0_settings_come_from_secrets_not_the_service_spec(swarm: PrivateSwarm) -> None:
    spec = swarm.docker("service", "inspect", API)
    assert "tenant.invalid" not in spec and "api.invalid" not in spec, "the Auth0 settings leak into the spec"
    assert POSTGRES_PASSWORD not in spec + swarm.docker("service", "inspect", f"{STACK}_postgres")
    task = swarm.running_tasks(API)[0]
    environ = swarm.docker("exec", task["Id"], "cat", "/proc/1/environ").split("\0")
    # Read from the secret files (NAME_FILE), never in the process environment either.
    assert "AUTH0_DOMAIN_FILE=/run/secrets/AUTH0_DOMAIN" in environ
    assert not [line for line in environ if line.startswith(("AUTH0_DOMAIN=", "AUTH0_AUDIENCE="))]
    assert swarm.docker("exec", task["Id"], "cat", "/run/secrets/AUTH0_DOMAIN") == "tenant.invalid"
    assert swarm.docker("exec", task["Id"], "cat", "/run/secrets/AUTH0_AUDIENCE") == "https://api.invalid"
    # The service started with them: without an issuer api-backend refuses to start (exit 2, never healthy).
    assert task["State"]["Health"]["Status"] == "healthy"
    assert f"API_REPLICA_URL=http://{task['Name'].lstrip('/')}:8080" in environ
    assert not [line for line in environ if line.startswith("DATABASE_URL=")]


def test_edge_serves_the_domains_over_https(swarm: PrivateSwarm) -> None:
    status, headers = _get(swarm, "https://127.0.0.1/", host=DOMAIN)
    assert status == 200 and headers["content-type"].startswith("text/html"), (status, headers)
    assert _get(swarm, "https://127.0.0.1/", host=f"docs.{DOMAIN}")[0] == 200
    assert _get(swarm, "https://127.0.0.1/", host=f"app.{DOMAIN}")[0] == 200
    status, _, body = _get_body(swarm, "https://127.0.0.1/config.json", host=f"app.{DOMAIN}")
    assert status == 200 and json.loads(body) == json.loads(APP_CONFIG.read_text())  # the Swarm config, served
    status, headers = _get(swarm, "https://127.0.0.1/api/bridge/status", host=f"app.{DOMAIN}")
    assert status == 401 and "Bearer" in headers["www-authenticate"], (status, headers)
    assert "strict-transport-security" in headers
    status, headers = _get(swarm, "http://127.0.0.1/", host=f"app.{DOMAIN}")
    assert status in (301, 308) and headers["location"].startswith(f"https://app.{DOMAIN}"), (status, headers)


def test_api_backend_scales_to_three_and_every_replica_serves(swarm: PrivateSwarm) -> None:
    _scale_api(swarm, 3)
    tasks = swarm.running_tasks(API)
    assert len(tasks) == 3
    addresses = {
        network["IPAddress"] for task in tasks for name, network in task["NetworkSettings"]["Networks"].items()
        if name == f"{STACK}_web"
    }  # fmt: skip
    assert len(addresses) == 3
    before = len(_lb_upstreams(swarm))
    for _ in range(60):
        status, _ = _get(swarm, "http://127.0.0.1:8080/api/bridge/status")
        assert status == 401
    served = {upstream.rsplit(":", 1)[0] for upstream in _lb_upstreams(swarm)[before:]}
    assert served == addresses, f"requests reached {served}, replicas are {addresses}"


def test_rolling_update_under_continuous_requests_fails_none(swarm: PrivateSwarm) -> None:
    _scale_api(swarm, 3)
    (old_image,) = {task["Config"]["Image"] for task in swarm.running_tasks(API)}
    new_image = f"{old_image}-v2"  # a new tag, as a release would bring
    swarm.docker("tag", old_image, new_image)
    before = len(_lb_upstreams(swarm))

    load = swarm.popen_in_netns(
        sys.executable, str(HERE / "netclient.py"), "load", "http://127.0.0.1:8080/api/bridge/status"
    )
    try:
        assert load.stderr is not None
        assert load.stderr.readline().strip() == "started"
        time.sleep(2)
        started = time.monotonic()
        swarm.docker("service", "update", "--detach=false", "--image", new_image, API, timeout=600)
        update_s = time.monotonic() - started
        time.sleep(2)
    finally:
        out, err = swarm.stop_group(load)
    assert out, f"the load generator reported nothing: {err}"
    counts: dict[str, int] = json.loads(out)
    upstreams = _lb_upstreams(swarm)[before:]
    retried = sum(1 for upstream in upstreams if "," in upstream)
    print(f"rolling update of 3 replicas: {update_s:.0f} s, {sum(counts.values())} requests {counts}, "
          f"{retried} moved to another replica by the load balancer")  # fmt: skip

    assert set(counts) == {"401"}, f"failed requests during the update: {counts}"
    assert counts["401"] >= 100, counts
    tasks = swarm.running_tasks(API)
    assert len(tasks) == 3
    assert {task["Config"]["Image"] for task in tasks} == {new_image}


def _bridges_connected(engine: PrivateSwarm, task_id: str) -> float:
    """The replica's own ``bridges_connected`` gauge, read inside its container."""
    script = "import urllib.request as r; print(r.urlopen('http://127.0.0.1:8080/metrics', timeout=5).read().decode())"
    metrics = engine.docker("exec", task_id, "python3", "-c", script)
    found = re.search(r"^bridges_connected(?:\{[^}]*\})? ([0-9.e+]+)$", metrics, flags=re.MULTILINE)
    assert found, "api-backend exports no bridges_connected gauge"
    return float(found.group(1))


def test_a_bridge_on_one_replica_answers_through_every_replica(swarm: PrivateSwarm, tmp_path: Path) -> None:
    """It switches api-backend to a test issuer whose public JWKS is a Swarm secret (OIDC_JWKS_FILE: the image
    has no dev issuer), since a real bridge needs a token every replica accepts and Auth0 is out of reach here;
    the service's previous spec (Auth0 secrets) is restored at the end, so the other tests pass before or after
    it."""
    from cloudtolocalllm.dev_issuer import DevIssuer

    issuer = DevIssuer(tmp_path / "issuer", issuer=TEST_ISSUER, audience=TEST_AUDIENCE)
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    swarm.docker("secret", "create", "ctllm_test_jwks", str(tmp_path / "jwks.json"))
    try:
        swarm.docker(
            "service", "update", "--detach=false", "--replicas", "3",
            "--secret-rm", "cloudtolocalllm_auth0_domain", "--secret-rm", "cloudtolocalllm_auth0_audience",
            "--env-rm", "AUTH0_DOMAIN_FILE", "--env-rm", "AUTH0_AUDIENCE_FILE",
            "--secret-add", "source=ctllm_test_jwks,target=jwks.json,uid=65532,gid=65532,mode=0400",
            "--env-add", f"OIDC_ISSUER={TEST_ISSUER}", "--env-add", f"OIDC_AUDIENCE={TEST_AUDIENCE}",
            "--env-add", "OIDC_JWKS_FILE=/run/secrets/jwks.json", API,
            timeout=600,
        )  # fmt: skip
        swarm.wait_converged()
        token = issuer.mint("swarm-user", ttl_s=3600)
        tasks = swarm.running_tasks(API)
        assert len(tasks) == 3

        bridge = swarm.popen_in_netns(
            sys.executable, str(HERE / "bridge_in_netns.py"), "http://127.0.0.1:8080", str(tmp_path / "bridge"),
            env={"CLOUDTOLOCALLLM_TOKEN": token},
        )  # fmt: skip
        try:
            assert bridge.stdout is not None
            ready = bridge.stdout.readline().split()
            assert ready[:1] == ["ready"], ready
            model = ready[1]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(_bridges_connected(swarm, t["Id"]) for t in tasks) < 1:
                time.sleep(0.5)
            holders = [t["Name"] for t in tasks if _bridges_connected(swarm, t["Id"]) == 1]
            assert len(holders) == 1, f"the bridge should hold one WebSocket to one replica, found {holders}"

            before = len(_lb_upstreams(swarm))
            for _ in range(30):
                status, _, body = _get_body(swarm, "http://127.0.0.1:8080/api/ollama/api/tags", token=token)
                assert status == 200, body
                assert [m["name"] for m in json.loads(body)["models"]] == [model]
            served = {upstream.rsplit(":", 1)[0] for upstream in _lb_upstreams(swarm)[before:]}
            assert len(served) == 3, f"the requests reached {served} only"

            # An API key in the stack's PostgreSQL works on every replica, and its revocation holds on all.
            status, _, body = _get_body(
                swarm, "http://127.0.0.1:8080/api/keys", token=token, method="POST",
                json_body=json.dumps({"name": "swarm", "scopes": ["inference"]}),
            )  # fmt: skip
            assert status == 201, body
            created = json.loads(body)
            for _ in range(6):
                status, _, body = _get_body(swarm, "http://127.0.0.1:8080/api/ollama/api/tags", token=created["key"])
                assert status == 200, body
            status, _, _ = _get_body(
                swarm, f"http://127.0.0.1:8080/api/keys/{created['id']}", token=token, method="DELETE"
            )
            assert status == 204
            for _ in range(6):  # round robin over the three replicas, each of which had the key cached
                status, _, body = _get_body(swarm, "http://127.0.0.1:8080/api/ollama/api/tags", token=created["key"])
                assert status == 401 and "revoked" in body, body
        finally:
            swarm.stop_group(bridge)
    finally:
        swarm.docker("service", "rollback", "--detach=false", API, timeout=600)  # back to the Auth0 secrets
        swarm.wait_converged()
        swarm.docker("secret", "rm", "ctllm_test_jwks")
