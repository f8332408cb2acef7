"""Active health checks against real nginx: an instance failing /health leaves its pool and comes back."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import httpx

from .controller_harness import RunningController
from .edge_harness import UpstreamServers, free_port, pool_instances, wait_for


def _set_health(upstreams: UpstreamServers, name: str, ok: bool) -> None:
    httpx.get(f"http://{upstreams.addresses[name]}/_test/health", params={"ok": "1" if ok else "0"}).raise_for_status()


@contextlib.contextmanager
def _unhealthy(upstreams: UpstreamServers, *names: str) -> Iterator[None]:
    for name in names:
        _set_health(upstreams, name, False)
    try:
        yield
    finally:
        for name in names:
            _set_health(upstreams, name, True)


def _answered_by(running: RunningController, count: int = 40) -> list[str]:
    client = running.edge.client()
    out = []
    for _ in range(count):
        response = client.get(running.edge.url("/api/tags"), headers={"Host": "app.localhost"})
        assert response.status_code == 200, response.text
        out.append(response.json()["upstream"])
    return out


def test_an_instance_failing_health_checks_leaves_its_pool_and_comes_back(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    running = make_controller()
    first, second = pool_instances(ctl_upstreams)["api-backend"]
    assert running.up("api-backend", first) == 1
    assert running.up("api-backend", second) == 1
    assert set(_answered_by(running)) == {"api-backend#1", "api-backend#2"}
    reloads = running.metric("edge_reloads_total", result="ok")

    with _unhealthy(ctl_upstreams, "api-backend#2"):
        wait_for(lambda: running.up("api-backend", second) == 0, "instance 2 to be marked down")
        # The instance still answers everything but /health: only the health check can have removed it.
        wait_for(lambda: running.metric("edge_reloads_total", result="ok") > reloads, "the reload")
        assert set(_answered_by(running)) == {"api-backend#1"}
        assert running.metric("edge_health_check_failures_total", pool="api-backend", instance=second) >= 2
        assert running.up("api-backend", first) == 1
        status = {item["instance"]: item for item in running.admin("/status").json()["upstreams"]}
        assert status[second]["up"] is False
        assert status[second]["last_error"] == "status 503"

    wait_for(lambda: running.up("api-backend", second) == 1, "instance 2 to be back")
    wait_for(lambda: "api-backend#2" in _answered_by(running, 20), "traffic to reach instance 2 again")
    assert running.metric("edge_reloads_total", result="rejected") == 0


def test_a_pool_with_every_instance_down_answers_a_clear_503_until_one_recovers(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    running = make_controller()
    first, second = pool_instances(ctl_upstreams)["api-backend"]
    with _unhealthy(ctl_upstreams, "api-backend#1", "api-backend#2"):
        # Not "a few 503s in a row": for 100 ms after a reload nginx's old workers still accept connections
        # (the master starts the new ones, sleeps, then tells the old ones to quit). The controller says
        # when the reload is applied and every old worker has stopped accepting.
        def applied() -> bool:
            status = running.admin("/status").json()
            down = {item["instance"] for item in status["upstreams"] if not item["up"]}
            return {first, second} <= down and status["config"]["settled"]

        wait_for(applied, "both instances removed and the reload applied")
        for _ in range(10):
            response = running.get("app.localhost", "/api/tags")
            assert response.status_code == 503, response.text
            assert response.json() == {"error": "service unavailable: no healthy upstream instance, retry later"}
            assert response.headers["retry-after"] == "5"
        page = running.get("app.localhost", "/chat")
        assert page.status_code == 200  # flutter-app is healthy: only the api-backend routes are down
        ready = running.admin("/ready")
        assert ready.status_code == 200  # the edge itself is fine; its upstreams are reported in /metrics
    wait_for(lambda: running.get("app.localhost", "/api/tags").status_code == 200, "recovery")


def test_a_name_that_does_not_resolve_is_a_down_instance_not_a_failed_start(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    # nginx itself would refuse the whole configuration ("host not found in upstream").
    instances = pool_instances(ctl_upstreams)
    instances["api-backend"] = [instances["api-backend"][0], "no-such-host.invalid:8080"]
    running = make_controller(instances=instances)
    assert running.up("api-backend", "no-such-host.invalid:8080") == 0
    assert set(_answered_by(running, 10)) == {"api-backend#1"}
    status = {item["instance"]: item for item in running.admin("/status").json()["upstreams"]}
    assert status["no-such-host.invalid:8080"]["last_error"].startswith("gaierror")
    conf = running.controller.nginx.conf_path.read_text()
    assert "no-such-host" not in conf


def test_host_names_are_resolved_by_the_controller_and_rendered_as_addresses(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    instances = pool_instances(ctl_upstreams)
    port = instances["api-backend"][0].rsplit(":", 1)[1]
    instances["api-backend"] = [f"localhost:{port}"]
    running = make_controller(instances=instances)
    assert running.up("api-backend", f"localhost:{port}") == 1
    conf = running.controller.nginx.conf_path.read_text()
    assert f"# localhost:{port}" in conf
    assert f"server 127.0.0.1:{port};" in conf or f"server [::1]:{port};" in conf
    assert set(_answered_by(running, 5)) == {"api-backend#1"}


def test_a_dead_port_is_down_from_the_first_check(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    instances = pool_instances(ctl_upstreams)
    dead = f"127.0.0.1:{free_port()}"
    instances["api-backend"] = [instances["api-backend"][0], dead]
    running = make_controller(instances=instances)
    assert running.up("api-backend", dead) == 0
    assert set(_answered_by(running, 10)) == {"api-backend#1"}


def test_admin_endpoints(make_controller: Callable[..., RunningController]) -> None:
    running = make_controller()
    health = running.admin("/health")
    assert health.status_code == 200
    assert health.json()["service"] == "edge"
    ready = running.admin("/ready")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) == {"nginx", "config"}
    metrics = running.metrics()
    assert metrics[("edge_nginx_up", ())] == 1
    assert metrics[("edge_nginx_restarts_total", ())] == 0
    assert metrics[("edge_certificate_self_signed", ())] == 0
    assert metrics[("edge_certificate_expiry_timestamp_seconds", ())] > 0
    for result in ("ok", "rejected", "failed"):
        assert ("edge_reloads_total", (("result", result),)) in metrics
    status = running.admin("/status").json()
    assert status["nginx"]["running"] is True
    assert status["config"]["generation"] == running.edge.serving_generation()
    json.dumps(status)
    # The admin port is the controller's own; nginx does not route it.
    assert running.get("app.localhost", "/metrics").json()["upstream"] == "flutter-app#1"
