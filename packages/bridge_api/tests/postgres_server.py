"""A real PostgreSQL server for tests: a private cluster (initdb) in a temporary folder, reached over a
unix socket in that folder only (no TCP port), stopped and removed afterwards; stoppable and restartable.

PostgreSQL refuses to run as root; when the tests run as root, the cluster runs as the ``postgres`` system
user (Debian's package creates it) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path:
    # Debian keeps the server binaries out of PATH, one folder per major version.
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/system-deps.sh installs it)")
    return Path(pg_ctl).parent


class PostgresServer:
    USER = "ctllm"
    DATABASE = "postgres"

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="ctllm-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://{self.USER}@/{self.DATABASE}?host={self.root}"

    def _run(self, *argv: str) -> None:
        result = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {result.stderr[-1000:]} {log[-1000:]}")

    def start(self) -> None:
        if not self.data.exists():
            initdb = str(self.bindir / "initdb")
            self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", self.USER, "-E", "UTF8", "--no-sync")
        options = f"-k {self.root} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        """Stop at once (like a crash or an outage: clients see their connections drop)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
