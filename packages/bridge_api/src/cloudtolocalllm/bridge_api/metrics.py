"""Tunnel metrics, registered on the app's registry (see core.metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["TunnelMetrics"]


class TunnelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.bridges_connected = Gauge("bridges_connected", "Bridges connected now.", registry=registry)
        self.streams_active = Gauge("relay_streams_active", "Relayed requests in flight.", registry=registry)
        self.bytes_to_bridge = Counter(
            "relay_bytes_to_bridge", "Request body bytes sent to bridges.", registry=registry
        )
        self.bytes_from_bridge = Counter(
            "relay_bytes_from_bridge", "Response body bytes received from bridges.", registry=registry
        )
        self.ttfb = Histogram(
            "relay_time_to_first_byte_seconds",
            "From the start of a relayed request to its response head.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.errors = Counter("relay_errors", "Relay and tunnel errors by kind.", ["kind"], registry=registry)
        # Several replicas: requests relayed to the replica holding the bridge, and the shared directory.
        self.forwarded = Counter(
            "replica_forwarded_requests",
            "Requests relayed to the replica that holds the bridge, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.directory_up = Gauge(
            "bridge_directory_up", "1 while the bridge directory answers, else 0.", registry=registry
        )
        self.directory_errors = Counter(
            "bridge_directory_errors", "Failed bridge directory operations.", ["operation"], registry=registry
        )
