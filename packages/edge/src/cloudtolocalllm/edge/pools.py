"""Changing a pool's instances at run time: the admin endpoint and the ``set-pool`` command that calls it.

Zero-downtime updates need the edge to stop sending to an old instance *before* it stops: the deploy tool
starts a new instance, waits until it is healthy, sets the pool to old + new, then to new alone (each change a
validated graceful reload), and only then stops the old one. ``PUT /upstreams/<pool>`` applies such a change
only when every listed instance passes its health check, so a pool is never switched to something that does
not answer. The endpoint changes what the edge serves, so it answers loopback clients only; in a container
that means ``docker exec <edge> cloudtolocalllm-edge set-pool ...``.

A change lives in the controller's memory: a restarted edge starts again from its TOML file. With the compose
file's service names (``static-site:8080``) that file resolves to whatever containers run at that time.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudtolocalllm.edge.config import Pool

if TYPE_CHECKING:
    from cloudtolocalllm.edge.controller import Controller

__all__ = ["PoolChangeError", "pool_route", "set_pool_command", "validate_instances"]

USAGE = "usage: cloudtolocalllm-edge set-pool <pool> <host:port> [<host:port> ...]"


class PoolChangeError(Exception):
    """A pool change that was refused; ``status`` is the HTTP status the admin endpoint answers with."""

    def __init__(self, status: int, message: str, instances: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.instances = instances or []


def validate_instances(names: object) -> list[str]:
    """The instance list of a request body, checked like ``[upstreams.<pool>] instances`` in the TOML file."""
    try:
        pool = msgspec.convert({"instances": names}, Pool)
    except msgspec.ValidationError as exc:
        raise PoolChangeError(400, f"invalid instances: {exc}") from None
    for name in pool.instances:
        if not 1 <= int(name.rsplit(":", 1)[1]) <= 65535:
            raise PoolChangeError(400, f"port out of range in {name!r}")
    if len(set(pool.instances)) != len(pool.instances):
        raise PoolChangeError(400, "an instance is listed twice")
    return list(pool.instances)


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def pool_route(controller: Controller) -> Route:
    async def set_pool(request: Request) -> JSONResponse:
        if not _is_loopback(request):
            return JSONResponse({"error": "pool changes are accepted from loopback only"}, status_code=403)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": 'the body must be JSON: {"instances": ["host:port", ...]}'}, 400)
        if not isinstance(body, dict) or set(body) != {"instances"}:
            return JSONResponse({"error": 'the body must be {"instances": ["host:port", ...]}'}, 400)
        try:
            names = validate_instances(body["instances"])
            result = await controller.set_pool(request.path_params["pool"], names)
        except PoolChangeError as exc:
            return JSONResponse({"error": str(exc), "instances": exc.instances}, status_code=exc.status)
        return JSONResponse(result)

    return Route("/upstreams/{pool}", set_pool, methods=["PUT"])


def _admin_base() -> str:
    # The same settings the running controller read; a wildcard bind is reached on loopback.
    from cloudtolocalllm.core import load_settings
    from cloudtolocalllm.edge.settings import ControllerSettings

    settings = load_settings(ControllerSettings, prefix="EDGE_")
    host = settings.admin_host if settings.admin_host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.admin_port}"


def set_pool_command(argv: list[str]) -> int:
    """``cloudtolocalllm-edge set-pool <pool> <instance>...``: print the controller's answer; 0 when applied."""
    if len(argv) < 2 or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    pool, instances = argv[0], argv[1:]
    try:
        response = httpx.put(
            f"{_admin_base()}/upstreams/{pool}",
            json={"instances": instances},
            timeout=120,  # health checks of the new instances plus a reload
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        print(f"cloudtolocalllm-edge set-pool: the edge's admin endpoint did not answer: {exc}", file=sys.stderr)
        return 1
    answer: Any = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    print(json.dumps(answer, indent=2))
    if response.status_code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        print(f"cloudtolocalllm-edge set-pool: refused ({response.status_code}): {error}", file=sys.stderr)
        return 1
    return 0
