"""Liveness (``/health``) and readiness (``/ready``) endpoints.

Liveness is deliberately dumb: it answers from memory, without auth or dependency calls, so an orchestrator
never restarts a healthy process because a dependency is slow. Readiness runs every registered check
concurrently, each bounded by its own timeout, and says which one failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "CheckResult",
    "ReadinessCheck",
    "ReadinessReport",
    "health_endpoint",
    "readiness_endpoint",
    "run_checks",
]

CheckFn = Callable[[], Awaitable[object]]
DEFAULT_CHECK_TIMEOUT_S: Final = 2.0


class ReadinessCheck(msgspec.Struct, frozen=True):
    """A named async callable; it is healthy unless it raises, returns ``False`` or times out.

    A check with ``required=False`` is reported but never makes the service unready (status ``degraded``,
    still 200): for a dependency shared by every replica, whose loss would otherwise take them all out of
    the load balancer at once although they can still serve part of the traffic.
    """

    name: str
    check: CheckFn
    timeout_s: float = DEFAULT_CHECK_TIMEOUT_S
    required: bool = True


class CheckResult(msgspec.Struct, frozen=True):
    ok: bool
    duration_ms: float
    error: str | None = None


class ReadinessReport(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, CheckResult]


_json = msgspec.json.Encoder()


async def _run(check: ReadinessCheck) -> CheckResult:
    started = time.perf_counter()
    error: str | None = None
    try:
        async with asyncio.timeout(check.timeout_s):
            outcome = await check.check()
        if outcome is False:
            error = "check returned false"
    except TimeoutError:
        error = f"timed out after {check.timeout_s:g}s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return CheckResult(ok=error is None, duration_ms=round((time.perf_counter() - started) * 1000, 3), error=error)


async def run_checks(checks: Sequence[ReadinessCheck]) -> ReadinessReport:
    results = await asyncio.gather(*(_run(check) for check in checks))
    by_name = {check.name: result for check, result in zip(checks, results, strict=True)}
    if not all(result.ok for check, result in zip(checks, results, strict=True) if check.required):
        status = "fail"
    else:
        status = "ok" if all(result.ok for result in results) else "degraded"
    return ReadinessReport(status=status, checks=by_name)


async def health_endpoint(request: Request) -> Response:
    info = request.app.state.service
    body = _json.encode({"status": "ok", "service": info.name, "version": info.version})
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


async def readiness_endpoint(request: Request) -> Response:
    report = await run_checks(request.app.state.readiness_checks)
    return Response(
        _json.encode(report),
        status_code=503 if report.status == "fail" else 200,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
