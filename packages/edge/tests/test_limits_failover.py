"""Rate limits keyed by the real client address, and a clear 503 when every instance of a pool is down."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import httpx

from cloudtolocalllm.edge.render import render

from .edge_harness import Edge, UpstreamServers, assert_security_headers, free_port, pool_instances, wait_for


def _until_limited(
    edge: Edge, path: str, headers: dict[str, str], limit: int = 200
) -> tuple[int, httpx.Response, float]:
    client = edge.client()
    started = time.monotonic()
    for passed in range(limit):
        response = client.get(edge.url(path), headers={"Host": "app.localhost", **headers})
        if response.status_code == 429:
            return passed, response, time.monotonic() - started
        assert response.status_code == 200
    raise AssertionError(f"no 429 after {limit} requests")


def test_api_limit_is_10_per_second_with_a_burst_of_20_and_a_json_429(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge()
    passed, limited, elapsed = _until_limited(edge, "/api/tags", {})
    # One request plus the burst of 20 pass at once; refills at 10 r/s add at most one per 100 ms elapsed.
    assert 21 <= passed <= 21 + math.ceil(elapsed * 10) + 1
    assert limited.headers["content-type"] == "application/json"
    assert limited.json() == {"error": "rate limit exceeded, retry later"}
    assert limited.headers["retry-after"] == "1"
    assert_security_headers(limited, tls=True)


def test_general_limit_is_30_per_second_with_a_burst_of_100_and_an_html_429(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge()
    passed, limited, elapsed = _until_limited(edge, "/chat", {})
    assert 101 <= passed <= 101 + math.ceil(elapsed * 30) + 1
    assert limited.headers["content-type"].startswith("text/html")
    assert limited.headers["retry-after"] == "1"
    assert_security_headers(limited, tls=True)


SLOW = {"rate_limits": {"api": {"rate": 1, "per": "m", "burst": 2}}}


def test_behind_a_trusted_proxy_each_real_client_has_its_own_budget(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge({**SLOW, "trusted_proxies": {"addresses": ["127.0.0.1/32"]}})
    passed, _, _ = _until_limited(edge, "/api/tags", {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"})
    assert passed == 3
    other = edge.get("app.localhost", "/api/tags", headers={"X-Forwarded-For": "203.0.113.6"})
    assert other.status_code == 200
    assert other.json()["headers"]["x-forwarded-for"] == "203.0.113.6"
    assert other.json()["headers"]["x-real-ip"] == "203.0.113.6"
    limited: list[str] = []

    def logged() -> bool:  # the access log is buffered: the line is written within [logging] flush_s
        limited[:] = [entry for entry in edge.log_lines() if '"status":429' in entry]
        return bool(limited)

    wait_for(logged, "the 429's access log line", timeout=5)
    assert '"client":"203.0.113.5"' in limited[-1]


def test_an_untrusted_client_cannot_escape_the_limit_by_forging_x_forwarded_for(
    make_edge: Callable[..., Edge],
) -> None:
    edge = make_edge(SLOW)
    client = edge.client()
    statuses = [
        client.get(
            edge.url("/api/tags"), headers={"Host": "app.localhost", "X-Forwarded-For": f"203.0.113.{i}"}
        ).status_code
        for i in range(6)
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]


def _dead_instances(upstreams: UpstreamServers, *pools: str) -> dict[str, list[str]]:
    instances = pool_instances(upstreams)
    for pool in pools:
        instances[pool] = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    return instances


def test_every_instance_down_gives_a_clear_503(make_edge: Callable[..., Edge], upstreams: UpstreamServers) -> None:
    edge = make_edge(instances=_dead_instances(upstreams, "api-backend", "flutter-app"))
    api = edge.get("app.localhost", "/api/tags")
    assert api.status_code == 503
    assert api.json() == {"error": "service unavailable: no healthy upstream instance, retry later"}
    assert api.headers["retry-after"] == "5"
    assert_security_headers(api, tls=True)
    page = edge.get("app.localhost", "/chat")
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "Service unavailable" in page.text
    assert_security_headers(page, tls=True)
    assert edge.get("localhost", "/").status_code == 200  # the other pools are untouched


def test_one_dead_instance_is_skipped_without_errors(
    make_edge: Callable[..., Edge], upstreams: UpstreamServers
) -> None:
    instances = pool_instances(upstreams)
    instances["api-backend"] = [instances["api-backend"][0], f"127.0.0.1:{free_port()}"]
    edge = make_edge(instances=instances)
    statuses = {edge.get("app.localhost", "/api/tags").status_code for _ in range(10)}
    assert statuses == {200}


def test_a_pool_rendered_without_healthy_instances_answers_503_after_a_reload(
    make_edge: Callable[..., Edge], upstreams: UpstreamServers
) -> None:
    edge = make_edge()
    assert edge.get("app.localhost", "/api/tags").status_code == 200
    healthy = {name: list(pool.instances) for name, pool in edge.config.upstreams.items() if name != "api-backend"}
    edge.apply(render(edge.config, healthy=healthy))
    api = edge.get("app.localhost", "/api/tags")
    assert api.status_code == 503
    assert api.json()["error"].startswith("service unavailable")
    assert_security_headers(api, tls=True)
    edge.apply(render(edge.config))
    assert edge.get("app.localhost", "/api/tags").status_code == 200
