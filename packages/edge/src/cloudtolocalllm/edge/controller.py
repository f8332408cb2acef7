"""The controller: nginx's supervisor, health checker, certificate watcher, and the admin endpoints.

One asyncio task each:

- **supervisor**: starts nginx on a validated configuration and, when it dies, stops the workers it
  orphaned and starts it again with exponential backoff;
- **health checks**: every ``[health_checks].interval``, checks every upstream instance; a change of what
  nginx should be given (an instance leaving or re-joining its pool, a new address) re-renders, validates
  and reloads gracefully;
- **certificate watcher**: stats the certificate and key (following certbot's symlinks) and reloads when
  they change and are stable. A missing certificate is replaced by a self-signed bootstrap pair in the
  runtime directory so nginx starts (and serves ACME challenges) before the first real one exists.

Every change goes through one lock: render → ``nginx -t`` on a candidate file → atomic rename → SIGHUP →
wait until the master has started workers on the new configuration. A configuration nginx rejects never
replaces the running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography import x509
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudtolocalllm.core import HttpMetrics, ReadinessCheck, ServiceApp, ServiceInfo, create_app
from cloudtolocalllm.edge.certs import write_self_signed
from cloudtolocalllm.edge.config import EdgeConfig
from cloudtolocalllm.edge.health import HealthChecker, Instance
from cloudtolocalllm.edge.logs import forward_stderr, scrub
from cloudtolocalllm.edge.metrics import EdgeMetrics
from cloudtolocalllm.edge.nginx import ConfigRejected, Nginx
from cloudtolocalllm.edge.pools import PoolChangeError, pool_route
from cloudtolocalllm.edge.render import generation_of, render
from cloudtolocalllm.edge.settings import ControllerSettings
from cloudtolocalllm.edge.version import __version__

__all__ = ["Controller", "StartError"]

logger = logging.getLogger("cloudtolocalllm.edge.controller")

_PR_SET_CHILD_SUBREAPER: Final = 36
_TICK_S: Final = 0.1
_STABLE_RUN_S: Final = 60.0  # an nginx that ran this long resets the restart backoff
_START_TIMEOUT_S: Final = 10.0

CertSignature = tuple[tuple[str, int, int, int, int] | None, ...]


class StartError(Exception):
    """The edge cannot start: no configuration nginx accepts, even with the bootstrap certificate."""


def _become_subreaper() -> bool:
    """Workers orphaned by a killed nginx master are re-parented to us, so we can stop and reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _is_nginx_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith((b"nginx: worker process", b"nginx: cache"))


def _is_cache_process(pid: int) -> bool:
    """nginx's cache manager and loader: children of the master that never accept a connection."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: cache")
    except OSError:
        return False


def _is_draining(pid: int) -> bool:
    """An old worker retitles itself right before it closes its listening sockets (or has exited already)."""
    try:
        return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _own_children() -> set[int]:
    children: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                children.update(int(pid) for pid in (task / "children").read_text().split())
    return children


class Controller:
    """Owns one nginx and keeps it serving what the configuration and the health checks say."""

    def __init__(
        self, config: EdgeConfig, settings: ControllerSettings | None = None, *, subreaper: bool = False
    ) -> None:
        self.config = config
        self.settings = settings or ControllerSettings()
        self.runtime_dir = Path(config.nginx.runtime_dir)
        self.nginx = Nginx(self.runtime_dir, binary=config.nginx.binary)
        self.http_metrics = HttpMetrics()
        self.metrics = EdgeMetrics(self.http_metrics.registry)
        self.metrics.nginx_up.set_function(lambda: 1.0 if self.nginx.running else 0.0)
        self.checker = HealthChecker(config, on_result=self._on_check_result)
        self.subreaper = _become_subreaper() if subreaper else False
        self.bootstrap: tuple[str, str] | None = None  # the self-signed pair in use, if any
        self.live_text: str | None = None
        self.config_problem: str | None = "not started"
        self.reload_failed = False
        self._lock = asyncio.Lock()
        self._pool_lock = asyncio.Lock()  # one admin pool change at a time (each waits for its reload)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._known_workers: set[int] = set()
        self._orphans: set[int] = set()
        self._started_at = 0.0
        self._cert_seen: CertSignature = ()
        self.app = self.build_app()

    # -- the admin app ---------------------------------------------------------------------------------

    def build_app(self) -> ServiceApp:
        async def nginx_running() -> bool:
            if not self.nginx.running:
                raise RuntimeError("nginx is not running")
            return True

        async def config_valid() -> bool:
            if self.config_problem is not None:
                raise RuntimeError(self.config_problem)
            return True

        async def status(request: Request) -> JSONResponse:
            return JSONResponse(self.status())

        return create_app(
            ServiceInfo(self.config.logging.service, __version__),
            [Route("/status", status, methods=["GET"]), pool_route(self)],
            readiness_checks=[
                ReadinessCheck("nginx", nginx_running, timeout_s=1.0),
                ReadinessCheck("config", config_valid, timeout_s=1.0),
            ],
            metrics=self.http_metrics,
        )

    def status(self) -> dict[str, Any]:
        return {
            "nginx": {"running": self.nginx.running, "pid": self.nginx.pid, "workers": self.nginx.worker_pids()},
            "config": {
                "generation": generation_of(self.live_text) if self.live_text else None,
                "problem": self.config_problem,
                "settled": self.settled(),
            },
            "certificate": {
                "path": self.certificate()[0] if self.config.tls.enabled else None,
                "self_signed_bootstrap": self.bootstrap is not None,
            },
            "upstreams": [instance.as_dict() for instance in self.checker.instances],
        }

    def settled(self) -> bool:
        """nginx serves what the configuration and the latest health checks say, and no old worker still
        accepts connections: no reload is under way or failed, and rendering now gives the applied text."""
        return (
            self.nginx.running
            and not self._lock.locked()
            and not self.reload_failed
            and self.live_text is not None
            and self.render() == self.live_text
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bootstrap, check every instance once, validate and start nginx, then start the loops."""
        self._stopping.clear()
        self.nginx.prepare()
        if self.config.tls.enabled and not self._configured_certificate_present():
            self._write_bootstrap("the configured certificate is missing")
        await self.checker.run_round()
        self._update_gauges()
        # Taken before nginx reads the files: a change from now on is noticed by the watcher.
        self._cert_seen = self.certificate_signature()
        await self._install_first()
        await self._start_nginx()
        self._tasks = [
            asyncio.create_task(self._supervise(), name="edge-supervisor"),
            asyncio.create_task(self._health_loop(), name="edge-health"),
        ]
        if self.config.tls.enabled:
            self._tasks.append(asyncio.create_task(self._certificate_loop(), name="edge-certificates"))

    async def stop(self) -> int | None:
        """Stop the loops, then nginx gracefully (SIGQUIT: requests in flight finish)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        status = await asyncio.to_thread(self.nginx.stop, self.settings.stop_timeout)
        self._stop_orphans()
        self._reap_orphans()
        await self.checker.aclose()
        logger.info("nginx stopped", extra={"exit_status": status})
        return status

    # -- rendering and reloads -------------------------------------------------------------------------

    def configured_certificate(self) -> tuple[str, str]:
        return self.config.expand(self.config.tls.certificate), self.config.expand(self.config.tls.certificate_key)

    def certificate(self) -> tuple[str, str]:
        return self.bootstrap or self.configured_certificate()

    def render(self) -> str:
        return render(
            self.config,
            healthy=self.checker.healthy(),
            addresses=self.checker.addresses(),
            certificate=self.bootstrap,
        )

    async def _install_first(self) -> None:
        text = self.render()
        try:
            await asyncio.to_thread(self.nginx.install, text)
        except ConfigRejected as exc:
            if not self.config.tls.enabled or self.bootstrap is not None:
                raise StartError(scrub(str(exc))) from None
            # Most likely an unusable certificate: start on the bootstrap pair, the watcher retries later.
            logger.error("nginx rejected the configured certificate", extra={"nginx": scrub(exc.output)})
            self._write_bootstrap("nginx rejected the configured certificate")
            text = self.render()
            try:
                await asyncio.to_thread(self.nginx.install, text)
            except ConfigRejected as again:
                raise StartError(scrub(str(again))) from None
        self._installed(text)

    def _installed(self, text: str) -> None:
        self.live_text = text
        self.config_problem = None
        self._update_certificate_gauges()

    async def reconcile(self, *, reason: str, force: bool = False) -> bool:
        """Render what nginx should serve now; if it differs (or ``force``), validate and reload gracefully."""
        async with self._lock:
            text = self.render()
            if text == self.live_text and not force and not self.reload_failed:
                return True
            try:
                await asyncio.to_thread(self.nginx.install, text)
            except ConfigRejected as exc:
                self.metrics.reloads.labels("rejected").inc()
                logger.error(
                    "nginx rejected the new configuration; the running one is kept",
                    extra={"reason": reason, "nginx": scrub(exc.output)},
                )
                return False
            self._installed(text)
            if not self.nginx.running:
                return True  # the supervisor starts nginx on what was just installed
            before = set(self.nginx.worker_pids())
            self.nginx.reload()
            ok = await self._new_workers_started(before)
            self.reload_failed = not ok
            self.metrics.reloads.labels("ok" if ok else "failed").inc()
            generation = generation_of(text)
            if ok:
                logger.info("nginx reloaded", extra={"reason": reason, "generation": generation})
            else:
                self.config_problem = f"reload to generation {generation} did not start new workers"
                logger.error("nginx did not apply the new configuration", extra={"reason": reason})
            return ok

    async def _new_workers_started(self, before: set[int]) -> bool:
        """Applied: the master started workers on the new configuration *and* told every old one to shut down
        (until then an old worker may still accept a connection and serve it the old way). Draining the old
        workers' requests may take much longer and is not waited for. The cache manager and loader accept no
        connections and are left out."""
        deadline = time.monotonic() + self.settings.reload_timeout
        while time.monotonic() < deadline:
            if not self.nginx.running:
                return False
            current = {pid for pid in self.nginx.worker_pids() if not _is_cache_process(pid)}
            if current - before and all(_is_draining(pid) for pid in current & before):
                return True
            await asyncio.sleep(0.01)
        return False

    async def set_pool(self, pool: str, names: list[str]) -> dict[str, Any]:
        """Make ``names`` the instances of ``pool`` if every one passes its health check, and reload.

        Instances already in the pool keep their state (a down one refuses the change); new ones are checked
        once, now. Returns the pool's instances and the generation nginx serves once the reload is applied:
        from then on no new request reaches a removed instance (old workers finish the ones they hold).
        """
        if pool not in self.config.upstreams or not any(
            route.upstream == pool for site in self.config.sites for route in site.routes
        ):
            raise PoolChangeError(404, f"no route uses a pool named {pool!r}")
        async with self._pool_lock:
            candidates = self.checker.candidates(pool, names)
            await self.checker.run_round([i for i in candidates if not i.checked])
            if not all(i.up and i.address is not None for i in candidates):
                raise PoolChangeError(
                    409,
                    f"not every instance of {pool!r} passes its health check; the pool is unchanged",
                    [i.as_dict() for i in candidates],
                )
            removed = self.checker.replace_pool(pool, candidates)
            self.config.upstreams[pool] = msgspec.structs.replace(self.config.upstreams[pool], instances=names)
            for instance in removed:
                with contextlib.suppress(KeyError):
                    self.metrics.upstream_up.remove(instance.pool, instance.name)
            logger.info(
                "pool changed through the admin endpoint",
                extra={"pool": pool, "instances": names, "removed": [i.name for i in removed]},
            )
            if not await self.reconcile(reason=f"pool {pool} changed"):
                raise PoolChangeError(503, "nginx did not apply the change; see the edge's log")
            self._update_gauges()
            return {
                "pool": pool,
                "generation": generation_of(self.live_text or ""),
                "instances": [i.as_dict() for i in candidates],
            }

    # -- nginx process ---------------------------------------------------------------------------------

    async def _start_nginx(self) -> bool:
        """Start nginx on the live configuration; True when its workers are up."""
        async with self._lock:
            self.nginx.start(stderr=subprocess.PIPE, stdout=None)
            process = self.nginx.process
            assert process is not None
            assert process.stderr is not None
            forward_stderr(process.stderr)
            self._started_at = time.monotonic()
            deadline = self._started_at + _START_TIMEOUT_S
            while time.monotonic() < deadline and self.nginx.running:
                workers = self.nginx.worker_pids()
                if workers:
                    self._known_workers = set(workers)
                    logger.info(
                        "nginx started",
                        extra={"pid": self.nginx.pid, "generation": generation_of(self.live_text or "")},
                    )
                    return True
                await asyncio.sleep(0.02)
            return False

    async def _supervise(self) -> None:
        backoff = self.settings.restart_backoff
        while not self._stopping.is_set():
            while self.nginx.running:
                workers = self.nginx.worker_pids()
                if workers:
                    self._known_workers = set(workers)
                self._reap_orphans()
                if await self._sleep(_TICK_S):
                    return
            process = self.nginx.process
            status = process.returncode if process is not None else None
            if time.monotonic() - self._started_at > _STABLE_RUN_S:
                backoff = self.settings.restart_backoff
            logger.error(
                "nginx exited unexpectedly; restarting it",
                extra={"exit_status": status, "restart_in_s": round(backoff, 3)},
            )
            self._stop_orphans()
            if await self._sleep(backoff):
                return
            backoff = min(backoff * 2, self.settings.restart_backoff_max)
            self.metrics.nginx_restarts.inc()
            async with self._lock:
                # Start on what the health checks say now, not on what was live when nginx died.
                text = self.render()
                try:
                    await asyncio.to_thread(self.nginx.install, text)
                    self._installed(text)
                except ConfigRejected as exc:
                    logger.error("nginx rejected the configuration at restart", extra={"nginx": scrub(exc.output)})
            if not await self._start_nginx():
                process = self.nginx.process
                logger.error("nginx did not start", extra={"exit_status": process.poll() if process else None})

    def _stop_orphans(self) -> None:
        """Workers of a dead master keep the listening sockets: tell them to finish and exit (SIGQUIT)."""
        candidates = set(self._known_workers)
        if self.subreaper:
            candidates |= {pid for pid in _own_children() if pid != self.nginx.pid}
        current = set(self.nginx.worker_pids())
        for pid in candidates - current:
            if _is_nginx_worker(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGQUIT)
                self._orphans.add(pid)
        self._known_workers = current

    def _reap_orphans(self) -> None:
        for pid in list(self._orphans):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (no subreaper): init reaps it
                done = pid if not _is_nginx_worker(pid) else 0
            if done:
                self._orphans.discard(pid)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True at once when the controller is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    # -- health checks ---------------------------------------------------------------------------------

    def _on_check_result(self, instance: Instance, ok: bool) -> None:
        if not ok:
            self.metrics.health_check_failures.labels(instance.pool, instance.name).inc()

    def _update_gauges(self) -> None:
        for instance in self.checker.instances:
            self.metrics.upstream_up.labels(instance.pool, instance.name).set(1 if instance.up else 0)

    async def _health_loop(self) -> None:
        while not await self._sleep(self.config.health_checks.interval):
            changed = await self.checker.run_round()
            if changed or self.reload_failed:
                await self.reconcile(reason="upstream health changed")
            self._update_gauges()  # after the reload: "up" means in the pool nginx is serving

    # -- certificates ----------------------------------------------------------------------------------

    def _configured_certificate_present(self) -> bool:
        return all(os.path.isfile(path) for path in self.configured_certificate())

    def _write_bootstrap(self, why: str) -> None:
        folder = self.runtime_dir / "bootstrap"
        cert, key = str(folder / "fullchain.pem"), str(folder / "privkey.pem")
        hosts = [host for site in self.config.sites for host in self.config.hosts(site) if "*" not in host]
        write_self_signed(hosts or ["localhost"], cert, key, days=self.settings.bootstrap_days)
        self.bootstrap = (cert, key)
        logger.warning(
            "serving a self-signed bootstrap certificate until the configured one is usable",
            extra={"why": why, "configured": self.configured_certificate()[0]},
        )

    def _update_certificate_gauges(self) -> None:
        self.metrics.certificate_self_signed.set(1 if self.bootstrap else 0)
        if not self.config.tls.enabled:
            return
        try:
            pem = Path(self.certificate()[0]).read_bytes()
            cert = x509.load_pem_x509_certificate(pem)
        except (OSError, ValueError):
            return
        self.metrics.certificate_expiry.set(cert.not_valid_after_utc.timestamp())

    def certificate_signature(self) -> CertSignature:
        """Identity of the configured files: their real path (certbot swaps symlinks), inode, size and mtime."""
        out: list[tuple[str, int, int, int, int] | None] = []
        for path in self.configured_certificate():
            try:
                st = os.stat(path)
                out.append((os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    async def _certificate_loop(self) -> None:
        interval = self.settings.cert_poll_interval
        while not await self._sleep(interval):
            current = self.certificate_signature()
            if current == self._cert_seen:
                continue
            # certbot updates the certificate and the key one after the other: act on a pair seen twice.
            if await self._sleep(interval):
                return
            if self.certificate_signature() != current:
                continue
            self._cert_seen = current
            await self.certificate_changed()

    async def certificate_changed(self) -> bool:
        """Serve the configured certificate if it is usable, else (missing) the bootstrap pair; reload."""
        previous = self.bootstrap
        if self._configured_certificate_present():
            self.bootstrap = None
            ok = await self.reconcile(reason="certificate files changed", force=True)
            if ok:
                logger.info("serving the renewed certificate", extra={"path": self.configured_certificate()[0]})
            elif previous is not None:
                self.bootstrap = previous  # still live: nginx rejected the new pair
            return ok
        logger.error("the configured certificate disappeared", extra={"path": self.configured_certificate()[0]})
        if self.bootstrap is None:
            # nginx keeps the old one in memory, but could not reload or restart without a file to read.
            self._write_bootstrap("the configured certificate disappeared")
            return await self.reconcile(reason="certificate files removed", force=True)
        return True


async def run_until(controller: Controller, stop: Callable[[], Awaitable[object]]) -> None:
    """Start ``controller``, wait for ``stop()`` and stop it (used by the CLI and by tests)."""
    await controller.start()
    try:
        await stop()
    finally:
        await controller.stop()
