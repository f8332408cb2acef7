"""The controller's Prometheus metrics, registered on the admin app's registry (core's ``HttpMetrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["RELOAD_RESULTS", "EdgeMetrics"]

# ok: new workers serve the new configuration; rejected: `nginx -t` refused it (the running one is kept);
# failed: nginx accepted it on disk but did not start new workers in time (e.g. a port it cannot bind).
RELOAD_RESULTS = ("ok", "rejected", "failed")


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.upstream_up = Gauge(
            "edge_upstream_up",
            "1 when the upstream instance passes its health checks and is in its pool, else 0.",
            ["pool", "instance"],
            registry=registry,
        )
        self.health_check_failures = Counter(
            "edge_health_check_failures",
            "Failed active health checks, by upstream instance.",
            ["pool", "instance"],
            registry=registry,
        )
        self.reloads = Counter("edge_reloads", "nginx configuration reloads, by result.", ["result"], registry=registry)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.nginx_restarts = Counter(
            "edge_nginx_restarts", "Times nginx died and the controller started it again.", registry=registry
        )
        self.nginx_up = Gauge("edge_nginx_up", "1 while the nginx master process is running.", registry=registry)
        self.certificate_expiry = Gauge(
            "edge_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate nginx serves (Unix time).",
            registry=registry,
        )
        self.certificate_self_signed = Gauge(
            "edge_certificate_self_signed",
            "1 while the edge serves its self-signed bootstrap certificate (the configured one is missing).",
            registry=registry,
        )
