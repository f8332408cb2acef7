"""The app factory every service starts from.

:func:`create_app` returns a starlette app with ``/health``, ``/ready`` and ``/metrics`` mounted, request ids,
access logs and metrics for every request, the security headers on every response, and optional bearer
auth. The request-context and security-header layers wrap starlette's own error handler, so even an
unhandled exception's 500 carries the headers and gets its access-log line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
from starlette.applications import Starlette
from starlette.authentication import AuthenticationBackend
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Lifespan

from cloudtolocalllm.core.auth.backend import AuthMiddleware
from cloudtolocalllm.core.health import ReadinessCheck, health_endpoint, readiness_endpoint
from cloudtolocalllm.core.metrics import HttpMetrics, metrics_endpoint
from cloudtolocalllm.core.middleware import DEFAULT_SECURITY_HEADERS, RequestContextMiddleware

__all__ = ["DEFAULT_CSP", "ServiceApp", "ServiceInfo", "create_app"]

# Strict by default: same-origin everything, no inline script, no framing by other origins.
DEFAULT_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'self'; base-uri 'self'; form-action 'self'; object-src 'none'"
)


class ServiceInfo(msgspec.Struct, frozen=True):
    name: str
    version: str


class ServiceApp(Starlette):
    """Starlette with core's outermost layers placed outside its ServerErrorMiddleware."""

    def __init__(
        self,
        *args: Any,
        metrics: HttpMetrics,
        security_headers: Mapping[str, str],
        **kwargs: Any,
    ) -> None:
        self._metrics = metrics
        self._security_headers = dict(security_headers)
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        return RequestContextMiddleware(app, self._metrics, security_headers=self._security_headers.items())


def create_app(
    info: ServiceInfo,
    routes: Sequence[BaseRoute] = (),
    *,
    readiness_checks: Iterable[ReadinessCheck] = (),
    auth: AuthenticationBackend | None = None,
    content_security_policy: str | None = DEFAULT_CSP,
    extra_headers: Mapping[str, str] | None = None,
    middleware: Sequence[Middleware] = (),
    lifespan: Lifespan[Any] | None = None,
    metrics: HttpMetrics | None = None,
) -> ServiceApp:
    headers = dict(DEFAULT_SECURITY_HEADERS)
    if content_security_policy:
        headers["Content-Security-Policy"] = content_security_policy
    headers.update(extra_headers or {})
    metrics = metrics or HttpMetrics()
    stack = list(middleware)
    if auth is not None:
        stack.insert(0, Middleware(AuthMiddleware, backend=auth))
    app = ServiceApp(
        routes=[
            Route("/health", health_endpoint, methods=["GET", "HEAD"]),
            Route("/ready", readiness_endpoint, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *routes,
        ],
        middleware=stack,
        lifespan=lifespan,
        metrics=metrics,
        security_headers=headers,
    )
    app.state.service = info
    app.state.metrics = metrics
    app.state.readiness_checks = list(readiness_checks)
    return app
