"""Active health checks of every upstream instance, with fall/rise thresholds.

nginx OSS has only passive checks (a failed proxied request), and it resolves upstream host names once, at
start-up, refusing the whole configuration when one does not resolve. So the controller resolves each
instance's name itself, checks ``GET <health_path>`` on the address it found, and renders that *address*
for the instances that are up. A name that does not resolve is a failed check, never a failed start.

The first check decides an instance's initial state (so the edge starts with the instances that answer).
After that an instance goes down after ``fall`` consecutive failures and comes back after ``rise``
consecutive successes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

from cloudtolocalllm.edge.config import EdgeConfig, HealthChecks

__all__ = ["HealthChecker", "Instance", "used_pools"]

logger = logging.getLogger("cloudtolocalllm.edge.health")


def used_pools(config: EdgeConfig) -> list[str]:
    """Pools some route proxies to (the renderer leaves the others out, so they are not checked)."""
    used = {route.upstream for site in config.sites for route in site.routes}
    return [name for name in config.upstreams if name in used]


def _split(instance: str) -> tuple[str, int]:
    host, _, port = instance.rpartition(":")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _format(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class Instance:
    """One configured instance of a pool and what the checks found out about it."""

    pool: str
    name: str  # as configured: "api-backend-1:8080"
    health_path: str
    up: bool = False
    checked: bool = False
    address: str | None = None  # "ip:port" last resolved; what nginx is given
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    last_error: str | None = None
    last_check: float | None = None
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.host, self.port = _split(self.name)

    def record(self, ok: bool, checks: HealthChecks) -> bool:
        """Count one result; return whether the up/down state changed."""
        before = self.up
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.checked or self.successes >= checks.rise:
                self.up = True
        else:
            self.failures += 1
            self.successes = 0
            if not self.checked or self.failures >= checks.fall:
                self.up = False
        changed = self.checked and before != self.up
        self.checked = True
        return changed

    def as_dict(self) -> dict[str, object]:
        return {
            "pool": self.pool,
            "instance": self.name,
            "up": self.up,
            "address": self.address,
            "consecutive_successes": self.successes,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }


class HealthChecker:
    """Checks every instance of the pools in use; ``on_result`` sees each result, ``on_change`` each round
    that changed what nginx should be given (an instance's state, or the address of an instance that is up)."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        on_result: Callable[[Instance, bool], None] | None = None,
    ) -> None:
        self.config = config
        self.checks = config.health_checks
        self.instances = [
            Instance(pool=pool, name=name, health_path=config.upstreams[pool].health_path)
            for pool in used_pools(config)
            for name in config.upstreams[pool].instances
        ]
        self.on_result = on_result
        self._client = httpx.AsyncClient(
            timeout=self.checks.timeout,
            trust_env=False,  # never through an HTTP(S)_PROXY from the environment
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),  # a fresh connection: accepting is checked too
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- what nginx is given ---------------------------------------------------------------------------

    def healthy(self) -> dict[str, list[str]]:
        """Pool → the instances that are up (and have an address nginx can use)."""
        out: dict[str, list[str]] = {pool: [] for pool in used_pools(self.config)}
        for instance in self.instances:
            if instance.up and instance.address is not None:
                out[instance.pool].append(instance.name)
        return out

    def addresses(self) -> dict[str, str]:
        return {i.name: i.address for i in self.instances if i.up and i.address is not None}

    def snapshot(self) -> tuple[tuple[str, str, bool, str | None], ...]:
        return tuple((i.pool, i.name, i.up, i.address if i.up else None) for i in self.instances)

    def candidates(self, pool: str, names: list[str]) -> list[Instance]:
        """``names`` as instances of ``pool``: the known ones with their state, new ones not checked yet."""
        known = {i.name: i for i in self.instances if i.pool == pool}
        health_path = self.config.upstreams[pool].health_path
        return [known.get(name) or Instance(pool=pool, name=name, health_path=health_path) for name in names]

    def replace_pool(self, pool: str, instances: list[Instance]) -> list[Instance]:
        """Make ``instances`` the whole of ``pool`` (keeping the pools' order); return the ones removed."""
        removed = [i for i in self.instances if i.pool == pool and i not in instances]
        at = next((n for n, i in enumerate(self.instances) if i.pool == pool), len(self.instances))
        others = [i for i in self.instances if i.pool != pool]
        self.instances = others[:at] + instances + others[at:]
        return removed

    # -- checking --------------------------------------------------------------------------------------

    async def resolve(self, instance: Instance) -> str:
        if _is_ip(instance.host):
            return _format(instance.host, instance.port)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(instance.host, instance.port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{instance.host} has no address")
        ip = str(infos[0][4][0])
        return _format(ip, instance.port)

    async def check(self, instance: Instance) -> bool:
        """One check: resolve, then ``GET health_path`` on that address; 2xx within the timeout passes."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.checks.timeout):
                address = await self.resolve(instance)
                instance.address = address
                response = await self._client.get(
                    f"http://{address}{instance.health_path}",
                    headers={"Host": instance.name, "User-Agent": "cloudtolocalllm-edge-healthcheck"},
                )
            ok = 200 <= response.status_code < 300
            instance.last_error = None if ok else f"status {response.status_code}"
        except TimeoutError:
            ok, instance.last_error = False, f"timed out after {self.checks.timeout:g}s"
        except (OSError, httpx.HTTPError) as exc:
            ok, instance.last_error = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        instance.last_check = time.monotonic() - started
        return ok

    async def run_round(self, instances: Iterable[Instance] | None = None) -> bool:
        """Check every instance concurrently; return whether what nginx should be given changed."""
        targets = list(self.instances if instances is None else instances)
        before = self.snapshot()
        results = await asyncio.gather(*(self.check(instance) for instance in targets))
        for instance, ok in zip(targets, results, strict=True):
            changed = instance.record(ok, self.checks)
            if self.on_result is not None:
                self.on_result(instance, ok)
            if changed:
                if instance.up:
                    logger.warning(
                        "instance is healthy again: back in its pool",
                        extra={"pool": instance.pool, "instance": instance.name, "address": instance.address},
                    )
                else:
                    logger.error(
                        "instance failed its health checks: removed from its pool",
                        extra={"pool": instance.pool, "instance": instance.name, "error": instance.last_error},
                    )
        return self.snapshot() != before
