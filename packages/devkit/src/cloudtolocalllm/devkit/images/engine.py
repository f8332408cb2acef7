"""A private Docker engine under the cache directory, and the docker commands every other job runs through it.

The engine keeps its state in the cache directory, so images survive between sessions while no daemon is
left running after one; containers an interrupted run left in it are removed when it starts. ``DOCKER_HOST``,
when set, names an engine of the caller's that is used instead (and never cleaned).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudtolocalllm.devkit.launch import spawn

# Debian's client: it has the BuildKit builder built in (a newer client elsewhere on PATH may lack buildx).
DOCKER_CANDIDATES = ("/usr/bin/docker", "docker")


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "cloudtolocalllm"


def docker_binary() -> str:
    for candidate in DOCKER_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise SystemExit("images: no docker client found (apt-get install docker.io)")


@dataclass(frozen=True)
class Engine:
    """Where a private dockerd keeps everything; all paths derive from one state directory."""

    state: Path = field(default_factory=lambda: cache_dir() / "dockerd")

    @property
    def socket(self) -> Path:
        return self.state / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.state / "dockerd.pid"

    @property
    def exec_root(self) -> Path:
        return self.state / "exec"

    @property
    def log(self) -> Path:
        return self.state / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def pid(self) -> int | None:
        """The daemon's PID if the pidfile names a live dockerd, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return None
        return pid if cmdline and cmdline[0].endswith(b"dockerd") else None

    def ping(self) -> bool:
        conn = _UnixHTTPConnection(str(self.socket))
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def start(self, timeout: float = 30.0) -> bool:
        """Start the daemon unless it already answers; True if this call started it, and then the containers an
        earlier run left in it are gone (see remove_leftovers)."""
        if self.pid() and self.ping():
            return False
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise SystemExit("images: dockerd not found (apt-get install docker.io)")
        self.state.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        # No bridge and no iptables rules: containers under test use --network=host, builds use
        # --network=host, and nothing is left behind in the host's firewall or links.
        args = [
            dockerd,
            f"--host={self.host}",
            f"--data-root={self.state / 'data'}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--shutdown-timeout=5",
            "--log-level=warn",
        ]
        started_at = datetime.now(UTC)  # what was created before this is an earlier run's
        # Its own session: it may outlive the command that starts it (`ctllm-images dockerd start`); stop() ends
        # it by its pid, from any process.
        proc = spawn(args, self.log, own_session=True)
        _started[proc.pid] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"images: dockerd exited with {proc.returncode}; see {self.log}")
            if self.ping():
                self.remove_leftovers(before=started_at)
                return True
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"images: dockerd did not answer within {timeout:.0f}s; see {self.log}")

    def remove_leftovers(self, before: datetime) -> list[str]:
        """Remove the containers created before ``before`` (this daemon's start) and their anonymous volumes,
        saying so in one line on stderr; their names."""
        # Every job removes its containers when it ends, so what a fresh daemon holds was left by an interrupted
        # one, and with a restart policy (the deploy tests' `unless-stopped`) it runs again, holding ports and
        # names. All go, not only those with a label of the tooling's: the image tests' containers carry none,
        # and a leftover collides whoever made it. Safe because this engine is the tooling's own (its state is a
        # cache; an engine of one's own is DOCKER_HOST's, and this talks to its own socket only). Only the older
        # ones: another process may use the engine once it answers. No swarm state lives here: the Swarm tests
        # run a dockerd of their own (tests/orchestration/swarm.py).
        removed: list[str] = []
        failed: list[str] = []
        try:
            listed = self._api("GET", "/containers/json?all=1")
        except (OSError, RuntimeError, ValueError) as exc:
            listed = []
            failed.append(f"listing them: {exc}")
        for item in listed:
            name = item["Names"][0].lstrip("/") if item.get("Names") else item["Id"][:12]
            try:
                created = datetime.fromisoformat(self._api("GET", f"/containers/{item['Id']}/json")["Created"])
                if created < before:
                    self._api("DELETE", f"/containers/{item['Id']}?force=1&v=1", timeout=60)
                    removed.append(name)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                failed.append(f"{name}: {exc}")
        if removed:
            print(
                f"images: removed {len(removed)} container(s) an earlier run left in the private engine: "
                + ", ".join(sorted(removed)),
                file=sys.stderr,
            )
        if failed:
            print(f"images: could not clean the private engine ({'; '.join(failed)})", file=sys.stderr)
        return removed

    def _api(self, method: str, path: str, timeout: float = 10) -> Any:
        """One request to this engine's own socket, never DOCKER_HOST's; its JSON answer (None if empty)."""
        conn = _UnixHTTPConnection(str(self.socket), timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {body.decode(errors='replace').strip()}")
        return json.loads(body) if body else None

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the daemon by its PID (and its containerd if it outlives it); True if one was running."""
        pid = self.pid()
        containerd = _pid_from(self.exec_root / "containerd" / "containerd.pid", b"containerd")
        if pid is None and containerd is None:
            return False
        for target in (pid, containerd):
            if target is not None:
                _terminate(target, timeout)
                if target in _started:  # reaped by _terminate; poll() lets the Popen object know
                    _started.pop(target).poll()
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        # dockerd leaves its bind mount of the host's network namespace behind (--network=host containers).
        netns = self.exec_root / "netns" / "default"
        if any(line.split()[1] == str(netns) for line in Path("/proc/self/mounts").read_text().splitlines()):
            subprocess.run(["umount", str(netns)], check=False)
        return True


# The daemons this process started, so their Popen objects live (and are reaped) until stop().
_started: dict[int, subprocess.Popen[bytes]] = {}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 2) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()  # not yet self.sock, so close() would not
            raise
        self.sock = sock


def _pid_from(pidfile: Path, name: bytes) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return None
    return pid if name in cmdline.split(b"\0")[0] else None


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reap it when this process started it
        os.waitpid(pid, 0)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


@contextlib.contextmanager
def docker_env() -> Iterator[dict[str, str]]:
    """The environment for docker commands: the caller's DOCKER_HOST if set, else a private engine that is
    stopped again on exit if this block started it."""
    if os.environ.get("DOCKER_HOST"):
        yield {"DOCKER_HOST": os.environ["DOCKER_HOST"], "DOCKER_BUILDKIT": "1"}
        return
    engine = Engine()
    started = engine.start()
    try:
        yield engine.env()
    finally:
        if started:
            engine.stop()


def docker(env: Mapping[str, str], *args: str, check: bool = True, capture: bool = False) -> str:
    result = subprocess.run(
        [docker_binary(), *args],
        env={**os.environ, **env},
        check=check,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return (result.stdout or "").strip()


def image_exists(env: Mapping[str, str], name: str) -> bool:
    result = subprocess.run(
        [docker_binary(), "image", "inspect", name],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0
