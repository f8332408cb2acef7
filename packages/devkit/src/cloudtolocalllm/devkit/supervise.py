"""Keep the dev stack's parts running: start each until it is ready, restart one that exits with backoff while
the others keep running, and stop them all, in reverse order, only when asked (Ctrl-C).

Its parts start through the devkit's launcher (``cloudtolocalllm.devkit.launch.spawn``), as the tests' and the
benchmarks' processes do.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudtolocalllm.devkit.launch import spawn

# A part that stays up this long has recovered: its next exit starts the backoff from the beginning.
STABLE_AFTER_S = 30.0
FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 15.0


@dataclass
class Service:
    """A part of the stack. ``launch`` replaces the plain ``command`` for a part with its own start-up (the
    bundled model, which runs a self-test and may fall back to another build); it returns a running process."""

    name: str
    command: list[str]
    probe: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60
    launch: Callable[[Path], subprocess.Popen[bytes]] | None = None


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


@dataclass
class _Part:
    service: Service
    proc: subprocess.Popen[bytes]
    up_since: float | None = None  # None while starting
    started_at: float = field(default_factory=time.monotonic)
    restarts_in_a_row: int = 0
    restart_at: float | None = None  # set while waiting to restart


class Supervisor:
    def __init__(self, logs: Path, env: dict[str, str], say: Callable[[str], None]) -> None:
        self.logs = logs
        self.env = env
        self.say = say
        self.parts: list[_Part] = []
        self.stopping = False

    def log_path(self, service: Service) -> Path:
        return self.logs / f"{service.name}.log"

    def _spawn(self, service: Service) -> subprocess.Popen[bytes]:
        if service.launch is not None:
            return service.launch(self.log_path(service))
        # Each part logs (JSON lines) to its own file, so the terminal shows what to do, not noise. Its own
        # session: Ctrl-C reaches the supervisor only, which stops the parts in order.
        return spawn(service.command, self.log_path(service), {**self.env, **service.env}, own_session=True)

    def start(self, service: Service) -> None:
        """Start a part and block until it is ready; a part that cannot start at all stops the stack."""
        part = _Part(service, self._spawn(service))
        self.parts.append(part)
        log = self.log_path(service)
        deadline = time.monotonic() + service.timeout_s
        while not service.probe():
            if part.proc.poll() is not None:
                raise SystemExit(f"devstack: {service.name} exited ({exit_reason(part.proc.returncode)}); see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"devstack: {service.name} not ready within {service.timeout_s:.0f}s; see {log}")
            time.sleep(0.2)
        part.up_since = time.monotonic()
        self.say(f"{service.name} is up")

    def watch(self, interval_s: float = 0.25) -> None:
        """Forever: restart what exits (backoff doubling to MAX_RESTART_DELAY_S), report what comes back."""
        while not self.stopping:
            for part in self.parts:
                self._tend(part)
            time.sleep(interval_s)

    def _tend(self, part: _Part) -> None:
        now = time.monotonic()
        service = part.service
        if part.restart_at is not None:
            if now >= part.restart_at:
                part.restart_at = None
                part.started_at = now
                try:
                    part.proc = self._spawn(service)
                except (Exception, SystemExit) as exc:  # a launch that fails is one more failed start
                    if self.stopping:  # Ctrl-C arrived during the launch: stop, do not retry
                        raise
                    self._schedule_restart(part, f"could not start: {exc}")
            return
        if part.proc.poll() is not None:
            self._schedule_restart(part, exit_reason(part.proc.returncode))
        elif part.up_since is None:
            if service.probe():
                part.up_since = now
                self.say(f"{service.name} is back up")
            elif now - part.started_at > service.timeout_s:
                self.say(f"{service.name} not ready within {service.timeout_s:.0f}s; restarting it")
                self._kill(part.proc)
        elif now - part.up_since >= STABLE_AFTER_S:
            part.restarts_in_a_row = 0

    def _schedule_restart(self, part: _Part, reason: str) -> None:
        part.up_since = None
        delay = min(FIRST_RESTART_DELAY_S * 2**part.restarts_in_a_row, MAX_RESTART_DELAY_S)
        part.restarts_in_a_row += 1
        part.restart_at = time.monotonic() + delay
        self.say(f"{part.service.name} exited ({reason}); restarting in {delay:g}s; see {self.log_path(part.service)}")

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        # The part itself, not its group: the edge stops its own nginx, gracefully.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    def stop_all(self) -> None:
        self.stopping = True
        for part in reversed(self.parts):
            if part.proc.poll() is None:
                self._kill(part.proc)
        for part in reversed(self.parts):
            try:
                part.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.say(f"{part.service.name} did not stop in 20 s; killing it")
                self._kill(part.proc, signal.SIGKILL)
                part.proc.wait()
