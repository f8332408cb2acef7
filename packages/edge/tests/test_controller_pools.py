"""Changing a pool at run time (PUT /upstreams/<pool>): what zero-downtime updates are built on."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from .controller_harness import RunningController
from .edge_harness import UpstreamServers, free_port, pool_instances


def _answered_by(running: RunningController, count: int = 30) -> set[str]:
    client = running.edge.client()
    seen = set()
    for _ in range(count):
        response = client.get(running.edge.url("/api/tags"), headers={"Host": "app.localhost"})
        assert response.status_code == 200, response.text
        seen.add(response.json()["upstream"])
    return seen


def _put(running: RunningController, pool: str, body: object) -> httpx.Response:
    return httpx.put(f"{running.admin_url}/upstreams/{pool}", json=body, timeout=60)


def test_a_pool_is_replaced_instance_by_instance_without_a_failed_request(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    instances = pool_instances(ctl_upstreams)
    first, second = instances["api-backend"]
    running = make_controller(instances={**instances, "api-backend": [first]})
    assert _answered_by(running) == {"api-backend#1"}

    both = _put(running, "api-backend", {"instances": [first, second]})
    assert both.status_code == 200, both.text
    assert [i["instance"] for i in both.json()["instances"]] == [first, second]
    assert both.json()["generation"] == running.edge.serving_generation()
    assert _answered_by(running, 60) == {"api-backend#1", "api-backend#2"}

    only_new = _put(running, "api-backend", {"instances": [second]})
    assert only_new.status_code == 200, only_new.text
    # Applied means applied: from the answer on, no new request reaches the removed instance.
    assert _answered_by(running) == {"api-backend#2"}
    assert running.up("api-backend", second) == 1
    assert running.up("api-backend", first) != 1  # its gauge is gone (NaN), not left at 1
    status = running.admin("/status").json()
    assert [u["instance"] for u in status["upstreams"] if u["pool"] == "api-backend"] == [second]


def test_a_change_to_an_instance_that_does_not_answer_is_refused_and_changes_nothing(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    running = make_controller()
    before = running.edge.serving_generation()
    dead = f"127.0.0.1:{free_port()}"
    response = _put(running, "api-backend", {"instances": [dead]})
    assert response.status_code == 409
    assert "health check" in response.json()["error"]
    assert response.json()["instances"][0]["up"] is False
    assert running.edge.serving_generation() == before
    assert _answered_by(running) == {"api-backend#1", "api-backend#2"}


def test_bad_pool_changes_are_refused_with_a_reason(make_controller: Callable[..., RunningController]) -> None:
    running = make_controller()
    assert _put(running, "no-such-pool", {"instances": ["127.0.0.1:1"]}).status_code == 404
    assert _put(running, "api-backend", {"instances": []}).status_code == 400
    assert _put(running, "api-backend", {"instances": ["not an address"]}).status_code == 400
    assert _put(running, "api-backend", {"instances": ["127.0.0.1:99999"]}).status_code == 400
    assert _put(running, "api-backend", {"instances": ["127.0.0.1:80", "127.0.0.1:80"]}).status_code == 400
    assert _put(running, "api-backend", {"nodes": []}).status_code == 400
    bad_json = httpx.put(f"{running.admin_url}/upstreams/api-backend", content=b"{", timeout=10)
    assert bad_json.status_code == 400
    assert _answered_by(running, 10) == {"api-backend#1", "api-backend#2"}
