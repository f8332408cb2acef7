"""Run nginx as a supervised child and change its configuration safely.

Everything nginx writes (pid, temp files, the config itself) lives under one runtime directory, so it runs
as any user on a read-only root filesystem. A new configuration is written to a candidate file, checked with
``nginx -t`` against that file, atomically renamed over the live one and only then signalled with SIGHUP;
a candidate nginx rejects never touches the running configuration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Final

from cloudtolocalllm.edge.render import TEMP_DIRS, generation_of

__all__ = ["ConfigRejected", "Nginx", "NginxError"]

_CHECK_TIMEOUT_S: Final = 30.0


class NginxError(Exception):
    """nginx could not be started, signalled or stopped."""


class ConfigRejected(NginxError):
    """``nginx -t`` refused a candidate configuration; the running configuration was left untouched."""

    def __init__(self, output: str) -> None:
        self.output = output
        super().__init__(f"nginx rejected the configuration:\n{output.strip()}")


class Nginx:
    """One nginx master process (``daemon off``) owned by this object."""

    def __init__(self, runtime_dir: str | Path, *, binary: str = "nginx") -> None:
        self.runtime_dir = Path(runtime_dir)
        self.binary = binary
        self.conf_path = self.runtime_dir / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None

    # -- configuration ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the runtime directory tree nginx expects (temp dirs must exist before it starts)."""
        for name in TEMP_DIRS:
            (self.runtime_dir / "tmp" / name).mkdir(parents=True, exist_ok=True)

    def _command(self, conf: Path, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.runtime_dir}/", "-c", str(conf), "-e", "stderr", *extra]

    def check(self, text: str) -> Path:
        """Write ``text`` to a fresh candidate file and check it with ``nginx -t``; return its path."""
        self.prepare()
        fd, name = tempfile.mkstemp(prefix="nginx.conf.", suffix=".candidate", dir=self.runtime_dir)
        candidate = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(candidate, 0o644)
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                self._command(candidate, "-t", "-q"),
                capture_output=True,
                text=True,
                timeout=_CHECK_TIMEOUT_S,
                check=False,
            )
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        if result.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise ConfigRejected(result.stderr or result.stdout or f"exit status {result.returncode}")
        return candidate

    def install(self, text: str) -> str | None:
        """Validate ``text`` and make it the live configuration (atomic rename); return its generation."""
        candidate = self.check(text)
        os.replace(candidate, self.conf_path)
        dir_fd = os.open(self.runtime_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return generation_of(text)

    def apply(self, text: str) -> str | None:
        """Install ``text`` and, if nginx is running, reload it gracefully (no connection is dropped)."""
        generation = self.install(text)
        if self.running:
            self.reload()
        return generation

    def live_generation(self) -> str | None:
        try:
            return generation_of(self.conf_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    # -- process ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def worker_pids(self) -> list[int]:
        """The master's current children (new workers, plus old ones still draining after a reload)."""
        pid = self.pid
        if pid is None or not self.running:
            return []
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(child) for child in text.split()]

    def start(
        self, *, stderr: IO[bytes] | int | None = None, stdout: IO[bytes] | int | None = subprocess.DEVNULL
    ) -> None:
        """Start the master process on the live configuration (which :meth:`install` must have written).

        ``stdout=None`` lets nginx inherit this process's stdout, which the default access log
        (``/dev/stdout``) then writes to (a container's log stream).
        """
        if self.running:
            raise NginxError("nginx is already running")
        if not self.conf_path.exists():
            raise NginxError(f"no configuration installed at {self.conf_path}")
        self.prepare()
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self._command(self.conf_path),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "TZ": "UTC"},
        )

    def reload(self) -> None:
        """SIGHUP: nginx re-reads its configuration, starts new workers and lets the old ones finish."""
        if self.process is None or not self.running:
            raise NginxError("nginx is not running")
        self.process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGQUIT: finish in-flight requests), then SIGTERM, then SIGKILL."""
        process = self.process
        if process is None:
            return None
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)
        return process.poll()
