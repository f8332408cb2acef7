"""Assemble the api-backend app from its settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.routing import BaseRoute, Route, WebSocketRoute

from cloudtolocalllm.bridge_api.auth import ApiAuthBackend, CredentialVerifier
from cloudtolocalllm.bridge_api.bridge_socket import bridge_socket_endpoint
from cloudtolocalllm.bridge_api.database import DatabaseSettings
from cloudtolocalllm.bridge_api.dev_auth import dev_auth
from cloudtolocalllm.bridge_api.directory import BridgeDirectory, DirectoryUnavailable, InMemoryDirectory
from cloudtolocalllm.bridge_api.discovery import DISCOVERY_PATH, discovery_endpoint
from cloudtolocalllm.bridge_api.forward import ReplicaForwarder
from cloudtolocalllm.bridge_api.keys.endpoints import key_routes
from cloudtolocalllm.bridge_api.keys.service import KeyService
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.redis_directory import RedisDirectory
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.relay import RelayEndpoint
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.bridge_api.status import status_endpoint
from cloudtolocalllm.bridge_api.version import __version__
from cloudtolocalllm.core import HttpMetrics, ReadinessCheck, ServiceApp, ServiceInfo, create_app
from cloudtolocalllm.core.auth import AuthSettings, TokenVerifier, build_verifier
from cloudtolocalllm.protocol import CloseCode, close_reason

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
    database: DatabaseSettings | None = None,
) -> ServiceApp:
    """The app; ``directory`` overrides the one the settings name (tests share one between apps)."""
    keys = KeyService(settings, database or DatabaseSettings())
    # DEV_AUTH: the dev issuer's verifier and routes (the `dev` extra; DevIssuerMissing without it).
    dev = dev_auth(auth) if auth.dev_auth else None
    credentials = CredentialVerifier(verifier or (dev.verifier if dev else build_verifier(auth)), keys.verifier)
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
    closing: set[asyncio.Task[None]] = set()

    def close_bridges_on(key_id: str) -> None:
        """A revoked key's bridges are disconnected at once (on whichever replica holds them)."""
        reason = close_reason(CloseCode.UNAUTHORIZED, "API key revoked")
        for session in registry.all_sessions():
            if session.key_id == key_id:
                task = asyncio.create_task(session.close(CloseCode.UNAUTHORIZED, reason))
                closing.add(task)
                task.add_done_callback(closing.discard)

    keys.on_revoked = close_bridges_on

    async def accepting_traffic() -> bool:
        return not registry.draining

    async def bridge_directory() -> bool:
        if not registry.sync.available:
            raise DirectoryUnavailable("unreachable; retrying every second")
        return True

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        registry.sync.start()
        await keys.start()
        try:
            yield
        finally:
            await registry.sync.close()
            await forwarder.close()
            await keys.close()

    relay = RelayEndpoint(registry, settings, metrics, forwarder)
    routes: list[BaseRoute] = [
        Route("/api/ollama/{path:path}", relay),
        Route("/api/bridge/status", status_endpoint(registry), methods=["GET"]),
        Route(DISCOVERY_PATH, discovery_endpoint(settings, auth), methods=["GET"]),
        WebSocketRoute("/ws/bridge", bridge_socket_endpoint(registry, settings, credentials, metrics)),
        *key_routes(keys),
    ]
    if dev is not None:
        routes.extend(dev.routes)  # where DEV_ISSUER_URL says, for OIDC clients in dev
    app = create_app(
        ServiceInfo(SERVICE_NAME, __version__),
        routes,
        auth=ApiAuthBackend(credentials, keys.usage),
        readiness_checks=[
            ReadinessCheck("accepting-traffic", accepting_traffic, timeout_s=0.5),
            # Reported, not gating: without Redis every replica still serves its own bridges; failing
            # readiness would take all of them out of the load balancer at once.
            ReadinessCheck("bridge-directory", bridge_directory, timeout_s=0.5, required=False),
            # Reported, not gating: signed-in users and cached keys are served while the database is away.
            ReadinessCheck("database", keys.database_reachable, timeout_s=0.5, required=False),
        ],
        content_security_policy=API_CSP,
        metrics=http_metrics,
        lifespan=lifespan,
    )
    if dev is not None:
        dev.install_cors(app)
    app.state.registry = registry
    app.state.forwarder = forwarder
    app.state.relay_budget = relay.json_budget
    app.state.settings = settings
    app.state.verifier = credentials
    app.state.keys = keys
    return app
