"""Assemble the api-backend app from its settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from cloudtolocalllm.bridge_api.bridge_socket import bridge_socket_endpoint
from cloudtolocalllm.bridge_api.directory import BridgeDirectory, DirectoryUnavailable, InMemoryDirectory
from cloudtolocalllm.bridge_api.discovery import DISCOVERY_PATH, discovery_endpoint
from cloudtolocalllm.bridge_api.forward import ReplicaForwarder
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.redis_directory import RedisDirectory
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.relay import RelayEndpoint
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.bridge_api.status import status_endpoint
from cloudtolocalllm.bridge_api.version import __version__
from cloudtolocalllm.core import HttpMetrics, ReadinessCheck, ServiceApp, ServiceInfo, create_app
from cloudtolocalllm.core.auth import (
    AuthSettings,
    BearerAuthBackend,
    TokenVerifier,
    build_verifier,
    dev_issuer_from,
)
from cloudtolocalllm.core.auth.dev_code_flow import DevCodeFlow, dev_code_flow_from_env
from cloudtolocalllm.core.auth.dev_device_flow import DevDeviceFlow

__all__ = ["SERVICE_NAME", "build_app"]

SERVICE_NAME = "api-backend"
# An API serves no documents: nothing may be loaded, framed or embedded from its responses.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def build_directory(settings: ApiSettings) -> BridgeDirectory:
    if settings.redis_url:
        return RedisDirectory(settings.redis_url, timeout_s=settings.redis_timeout_s)
    return InMemoryDirectory()


def build_app(
    settings: ApiSettings,
    auth: AuthSettings,
    *,
    verifier: TokenVerifier | None = None,
    directory: BridgeDirectory | None = None,
) -> ServiceApp:
    """The app; ``directory`` overrides the one the settings name (tests share one between apps)."""
    verifier = verifier or build_verifier(auth)
    http_metrics = HttpMetrics()
    metrics = TunnelMetrics(http_metrics.registry)
    registry = BridgeRegistry(
        metrics,
        directory or build_directory(settings),
        ttl_s=settings.directory_ttl_s,
        refresh_s=settings.directory_refresh_s,
    )
    registry.replica_url = settings.replica_url.rstrip("/")
    forwarder = ReplicaForwarder(settings, metrics)

    async def accepting_traffic() -> bool:
        return not registry.draining

    async def bridge_directory() -> bool:
        if not registry.sync.available:
            raise DirectoryUnavailable("unreachable; retrying every second")
        return True

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        registry.sync.start()
        try:
            yield
        finally:
            await registry.sync.close()
            await forwarder.close()

    routes: list[BaseRoute] = [
        Route("/api/ollama/{path:path}", RelayEndpoint(registry, settings, metrics, forwarder)),
        Route("/api/bridge/status", status_endpoint(registry), methods=["GET"]),
        Route(DISCOVERY_PATH, discovery_endpoint(settings, auth), methods=["GET"]),
        WebSocketRoute("/ws/bridge", bridge_socket_endpoint(registry, settings, verifier, metrics)),
    ]
    dev_flow: DevCodeFlow | None = None
    if auth.dev_auth:
        # Serve the dev issuer's discovery + JWKS where its issuer URL says, for OIDC clients in dev,
        # with the browser sign-in (authorization code + PKCE) in front of them.
        prefix = urlsplit(auth.dev_issuer_url).path.rstrip("/")
        dev_flow = dev_code_flow_from_env(dev_issuer_from(auth))
        device_routes = DevDeviceFlow(dev_flow.issuer).routes(behind=dev_flow)  # `bridge login`, in front
        issuer_routes = device_routes + dev_flow.routes() + dev_flow.issuer.routes()
        routes.extend([Mount(prefix, routes=issuer_routes)] if prefix else issuer_routes)
    app = create_app(
        ServiceInfo(SERVICE_NAME, __version__),
        routes,
        auth=BearerAuthBackend(verifier),
        readiness_checks=[
            ReadinessCheck("accepting-traffic", accepting_traffic, timeout_s=0.5),
            # Reported, not gating: without Redis every replica still serves its own bridges; failing
            # readiness would take all of them out of the load balancer at once.
            ReadinessCheck("bridge-directory", bridge_directory, timeout_s=0.5, required=False),
        ],
        content_security_policy=API_CSP,
        metrics=http_metrics,
        lifespan=lifespan,
    )
    if dev_flow is not None:
        dev_flow.install_cors(app)  # the dev app's origins (DEV_REDIRECT_URIS) only
    app.state.registry = registry
    app.state.forwarder = forwarder
    app.state.settings = settings
    app.state.verifier = verifier
    return app
