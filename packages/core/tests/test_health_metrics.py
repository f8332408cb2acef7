from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route

from cloudtolocalllm.core import ReadinessCheck, ServiceInfo, create_app
from cloudtolocalllm.core.app import ServiceApp

SECURITY_HEADERS = {
    "x-frame-options": "SAMEORIGIN",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
}


async def ok() -> bool:
    return True


async def broken() -> None:
    raise ConnectionError("redis refused")


async def slow() -> None:
    await asyncio.sleep(10)


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


async def crash(request: Request) -> JSONResponse:
    raise RuntimeError("boom")


async def moved(request: Request) -> RedirectResponse:
    return RedirectResponse("/health")


def make_app(*checks: ReadinessCheck) -> ServiceApp:
    return create_app(
        ServiceInfo("svc", "9.9.9"),
        [
            Route("/items/{item_id}", item),
            Route("/crash", crash),
            Route("/moved", moved),
            Mount("/v1", routes=[Route("/things/{thing}", item)]),
        ],
        readiness_checks=checks,
    )


def client(app: ServiceApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_health_is_cheap_and_names_the_service() -> None:
    async with client(make_app(ReadinessCheck("never", slow))) as c:
        response = await c.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "svc", "version": "9.9.9"}


async def test_readiness_ok_when_every_check_passes() -> None:
    async with client(make_app(ReadinessCheck("a", ok), ReadinessCheck("b", ok))) as c:
        response = await c.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readiness_names_the_failed_and_the_timed_out_check() -> None:
    app = make_app(ReadinessCheck("db", ok), ReadinessCheck("redis", broken), ReadinessCheck("idp", slow, 0.05))
    async with client(app) as c:
        response = await c.get("/ready")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["db"]["ok"] is True
    assert body["checks"]["redis"]["error"] == "ConnectionError: redis refused"
    assert body["checks"]["idp"]["error"] == "timed out after 0.05s"


async def test_an_optional_check_that_fails_degrades_but_keeps_the_service_ready() -> None:
    app = make_app(ReadinessCheck("db", ok), ReadinessCheck("shared-cache", broken, required=False))
    async with client(app) as c:
        response = await c.get("/ready")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["checks"]["shared-cache"]["error"] == "ConnectionError: redis refused"


async def test_metrics_count_requests_by_route_template_not_path() -> None:
    app = make_app()
    async with client(app) as c:
        for n in range(3):
            await c.get(f"/items/{n}")
        await c.get("/v1/things/x")
        await c.get("/no/such/path?token=secret")
        text = (await c.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/items/{item_id}",status="200"} 3.0' in text
    assert 'route="/v1/things/{thing}"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "/items/1" not in text
    assert "secret" not in text
    assert "http_request_duration_seconds_bucket" in text


async def test_services_register_their_own_metrics() -> None:
    app = make_app()
    bridges = Counter("bridges_connected", "Bridges connected.", registry=app.state.metrics.registry)
    bridges.inc(2)
    async with client(app) as c:
        assert "bridges_connected_total 2.0" in (await c.get("/metrics")).text


@pytest.mark.parametrize("path", ["/health", "/items/1", "/nope", "/crash", "/moved"])
async def test_security_headers_on_every_response(path: str) -> None:
    async with client(make_app()) as c:
        response = await c.get(path, follow_redirects=False)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, (path, response.status_code)
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-request-id"]


async def test_handler_may_tighten_a_header() -> None:
    async def framed(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"X-Frame-Options": "DENY"})

    app = create_app(ServiceInfo("svc", "1"), [Route("/f", framed)])
    async with client(app) as c:
        response = await c.get("/f")
    assert response.headers.get_list("x-frame-options") == ["DENY"]


async def test_request_id_is_echoed_when_valid_and_replaced_when_not() -> None:
    async with client(make_app()) as c:
        kept = await c.get("/health", headers={"X-Request-ID": "abc-123"})
        replaced = await c.get("/health", headers={"X-Request-ID": "bad id\r\ninjected: 1"})
    assert kept.headers["x-request-id"] == "abc-123"
    assert replaced.headers["x-request-id"] != "bad id"
    assert len(replaced.headers["x-request-id"]) == 32
