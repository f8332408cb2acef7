"""A private single-node Docker Swarm in a network namespace of its own, for the stack test.

Swarm needs overlay networking, which the shared engine (``--bridge=none``) cannot give, so this starts a
second ``dockerd`` with its own state, inside a fresh network namespace: every port the stack publishes, every
bridge, veth and iptables rule it creates lives there and nowhere else, and deleting the namespace removes
them. Clients reach the stack from inside the namespace (``nsenter --net``) on its 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cloudtolocalllm.devkit.images.engine import docker_env
from cloudtolocalllm.devkit.launch import Proc, alive

ROOT = Path(os.environ.get("CTLLM_REPO_ROOT") or Path(__file__).resolve().parents[2])
HERE = Path(__file__).resolve().parent


class SwarmError(AssertionError):
    """A docker command failed; the message carries its output."""


class PrivateSwarm:
    """dockerd + ``docker swarm init`` in network namespace ``netns``, state under ``state``."""

    def __init__(self, state: Path, netns: str) -> None:
        self.state = state
        self.netns = netns
        self.netns_path = Path("/run/netns") / netns
        self.socket = state / "docker.sock"
        self.pidfile = state / "dockerd.pid"
        self.exec_root = state / "exec"
        self.docker_binary = shutil.which("/usr/bin/docker") or shutil.which("docker") or "docker"
        self._dockerd: Proc | None = None  # its log: state/dockerd.log

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    # -- commands -----------------------------------------------------------------------------------------

    def docker(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
        result = subprocess.run(
            [self.docker_binary, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise SwarmError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def in_netns(self, *command: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> str:
        """Run ``command`` inside the namespace (where the stack's published ports are)."""
        result = subprocess.run(
            ["nsenter", f"--net={self.netns_path}", *command],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise SwarmError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def popen_in_netns(self, *command: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", f"--net={self.netns_path}", *command],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: stop_group() ends whatever it started
        )

    @staticmethod
    def stop_group(process: subprocess.Popen[str], timeout: float = 90) -> tuple[str, str]:
        """SIGTERM to ``process``; if it has not exited within ``timeout``, SIGKILL to its whole group."""
        process.send_signal(signal.SIGTERM)
        try:
            return process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.communicate()

    # -- life cycle ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise SwarmError("the Swarm test needs root: it creates a network namespace and runs its own dockerd")
        for tool in ("dockerd", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise SwarmError(f"{tool} not found (scripts/system-deps.sh installs docker.io; util-linux, iproute2)")
        self.state.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        # nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup mounts dockerd needs.
        args = [
            "nsenter",
            f"--net={self.netns_path}",
            "dockerd",
            f"--host=unix://{self.socket}",
            f"--data-root={self.state / 'data'}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            "--shutdown-timeout=5",
            "--log-level=warn",
        ]
        self._dockerd = Proc("dockerd", args, {}, self.state)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._dockerd.alive():
                raise SwarmError(
                    f"dockerd exited with {self._dockerd.popen.returncode}:\n{self._dockerd.log_text()[-3000:]}"
                )
            with contextlib.suppress(SwarmError, subprocess.TimeoutExpired):
                self.docker("version", "--format", "{{.Server.Version}}", timeout=5)
                break
            time.sleep(0.2)
        else:
            raise SwarmError(f"dockerd did not answer within {timeout:.0f}s")
        # The manager's ports on the namespace's loopback only.
        self.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")

    def stop(self) -> None:
        """Leave the swarm, stop dockerd and its containerd, delete the namespace and the state."""
        if self.socket.exists():
            with contextlib.suppress(SwarmError, subprocess.TimeoutExpired):
                self.docker("swarm", "leave", "--force", timeout=60)
        containerd = _pid_in(self.exec_root / "containerd" / "containerd.pid")
        if self._dockerd is not None:
            self._dockerd.stop(timeout=30)
        if containerd is not None:
            _terminate(containerd, 30)
        # Whatever still runs in the namespace was started by this engine (shims, docker-proxy).
        if self.netns_path.exists():
            pids = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False)
            for pid in pids.stdout.split():
                _terminate(int(pid), 10)
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
        _unmount_below(self.state)
        shutil.rmtree(self.state, ignore_errors=True)

    # -- images -------------------------------------------------------------------------------------------

    def load_images(self, source_env: Mapping[str, str], names: list[str]) -> None:
        """``docker save`` from the engine that built them | ``docker load`` here."""
        save = subprocess.Popen(
            [self.docker_binary, "save", *names],
            env={**os.environ, **source_env},
            stdout=subprocess.PIPE,
        )
        assert save.stdout is not None
        load = subprocess.run(
            [self.docker_binary, "load", "--quiet"],
            env=self.env,
            stdin=save.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise SwarmError(f"moving {names} into the swarm's engine failed: {load.stderr}")

    def build_redis_image(self, base: str, tag: str) -> None:
        """A Redis image from the host's redis-server binary and the libraries it links (no registry here)."""
        context = self.state / "redis-image"
        (context / "lib").mkdir(parents=True, exist_ok=True)
        for name in ("redis-server", "redis-cli"):  # redis-cli: the stack's health check
            binary = shutil.which(name)
            if binary is None:
                raise SwarmError(f"{name} not found (scripts/system-deps.sh installs redis-server)")
            shutil.copy2(Path(binary).resolve(), context / name)
            ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
            for line in ldd.splitlines():
                parts = line.split("=>")
                if len(parts) == 2 and parts[1].split():
                    library = parts[1].split()[0]
                    shutil.copy2(Path(library).resolve(), context / "lib" / Path(library).name)
        (context / "Dockerfile").write_text(
            f"FROM {base}\n"
            "COPY lib/ /opt/redis/lib/\n"
            "COPY redis-server redis-cli /opt/redis/\n"
            "ENV LD_LIBRARY_PATH=/opt/redis/lib PATH=/opt/redis:/usr/bin:/bin\n"
            "USER 999\n"
            'CMD ["redis-server"]\n'
        )
        self.docker("build", "--quiet", "--tag", tag, str(context), env={"DOCKER_BUILDKIT": "0"})

    def build_postgres_image(self, base: str, tag: str) -> None:
        """A PostgreSQL image from the host's server (Debian's postgresql package): its binaries, share files,
        the libraries they link and the time zones, laid out as on the host, with an entry point that honours
        the official image's POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD_FILE (no registry here)."""
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[4]))
        if not found:
            raise SwarmError("PostgreSQL not found (scripts/system-deps.sh installs postgresql)")
        version_dir = found[-1].parent.parent
        context = self.state / "postgres-image"
        if context.exists():
            shutil.rmtree(context)
        (context / "lib").mkdir(parents=True)
        share = Path("/usr/share/postgresql") / version_dir.name
        shutil.copytree(version_dir, context / "pglib", symlinks=True)
        shutil.copytree(share, context / "pgshare", symlinks=True)
        shutil.copytree("/usr/share/zoneinfo", context / "zoneinfo", symlinks=True)
        for binary in ("postgres", "initdb", "pg_isready"):
            ldd = subprocess.run(["ldd", str(version_dir / "bin" / binary)], capture_output=True, text=True, check=True)
            for line in ldd.stdout.splitlines():
                parts = line.split("=>")
                if len(parts) == 2 and parts[1].split():
                    library = Path(parts[1].split()[0])
                    if not library.name.startswith(("libc.so", "libm.so", "libpthread", "libdl", "librt")):
                        shutil.copy2(library.resolve(), context / "lib" / library.name)
        (context / "entrypoint.sh").write_text(_POSTGRES_ENTRYPOINT)
        (context / "entrypoint.sh").chmod(0o755)
        (context / "Dockerfile").write_text(
            f"FROM {base}\n"
            f"COPY pglib/ {version_dir}/\n"
            f"COPY pgshare/ {share}/\n"
            "COPY zoneinfo/ /usr/share/zoneinfo/\n"
            "COPY lib/ /opt/postgres/lib/\n"
            "COPY entrypoint.sh /usr/local/bin/postgres-entrypoint\n"
            "RUN echo 'postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh' >> /etc/passwd \\\n"
            "    && echo 'postgres:x:999:' >> /etc/group \\\n"
            "    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \\\n"
            "    && chown -R 999:999 /var/lib/postgresql /var/run/postgresql && chmod 0700 /var/lib/postgresql/data\n"
            f"ENV LD_LIBRARY_PATH=/opt/postgres/lib PATH={version_dir}/bin:/usr/bin:/bin "
            "PGDATA=/var/lib/postgresql/data\n"
            "USER 999\n"
            'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]\n'
        )
        self.docker("build", "--quiet", "--tag", tag, str(context), env={"DOCKER_BUILDKIT": "0"})

    # -- services -----------------------------------------------------------------------------------------

    def services(self) -> dict[str, str]:
        """Service name -> "running/desired" replicas."""
        out = self.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def wait_converged(self, timeout: float = 300) -> dict[str, str]:
        """Until every service runs its desired replicas (tasks with a health check count once healthy)."""
        deadline = time.monotonic() + timeout
        services: dict[str, str] = {}
        while time.monotonic() < deadline:
            services = self.services()
            if services and all(_replicas_met(value) for value in services.values()):
                return services
            time.sleep(1)
        raise SwarmError(f"services not converged after {timeout:.0f}s: {services}\n{self.task_errors()}")

    def task_errors(self) -> str:
        return self.docker("stack", "ps", "ctllm", "--no-trunc", "--format", "{{.Name}} {{.CurrentState}} {{.Error}}")

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        """The service's running containers: image, addresses, user, read-only flag."""
        ids = self.docker("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={service}").split()
        if not ids:
            return []
        return [json.loads(line) for line in self.docker("inspect", "--format", "{{json .}}", *ids).splitlines()]


def _replicas_met(value: str) -> bool:
    running, _, desired = value.split()[0].partition("/")
    return running == desired


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _unmount_below(root: Path) -> None:
    """Mounts dockerd left under its state directory (overlays, secrets), deepest first."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False)


@contextlib.contextmanager
def source_engine() -> Iterator[dict[str, str]]:
    """The engine holding the built images: DOCKER_HOST if set, else the project's private one (started and
    stopped again here if it was not running)."""
    with docker_env() as env:
        yield dict(env)


# The part of the official postgres image's entry point the stack relies on: a first start creates the cluster
# with POSTGRES_USER (password from POSTGRES_PASSWORD_FILE) and POSTGRES_DB, clients connect with a password,
# and the service's command ("postgres" and its options) is the server's.
_POSTGRES_ENTRYPOINT = """#!/bin/sh
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" -A scram-sha-256 \\
        --locale=C -E UTF8 >/dev/null
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \\"$POSTGRES_DB\\"" | postgres --single -D "$PGDATA" postgres >/dev/null
fi
if [ "${1:-}" = postgres ]; then shift; fi  # the stack's command, as the official image takes it
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
"""
