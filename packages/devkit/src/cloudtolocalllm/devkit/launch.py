"""Where every child process of the tooling starts: its output appended to a log file.

``spawn`` starts one; :class:`Proc` is what a caller holds of it (its log, its JSON records, what it printed,
stop); ``wait_for``, ``alive`` and ``descendants`` watch it and what it started.

Standard library only: the local model's launcher and the images (run from nox's own environment) use it as
well as the tests, the benchmarks (through :mod:`cloudtolocalllm.devkit.procs`, which starts the real
programs), the test CA and the dev stack's supervisor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None, *, own_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log`` and ``env`` over this process's environment.

    Its stdin is /dev/null: the terminal's input belongs to whoever runs the tooling (a debugger in a test,
    the dev stack's Ctrl-C), and no child of it reads any (ssh, left on the terminal, would).

    ``own_session``: the child does not get the terminal's Ctrl-C, so whoever started it stops it, in order
    (the dev stack's supervisor)."""
    with log.open("ab") as out:  # the child holds its own copy of the descriptor
        return subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """``predicate``'s first true result, asked every ``interval`` seconds; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting for its parent counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, read from /proc: a daemon's per-connection processes and the parts a
    supervisor started in sessions of their own, which its process group does not hold."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state != "Z":
            children.setdefault(int(parent), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


class Proc:
    """A child process whose stdout+stderr go to a log file the test can read (JSON lines)."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, *, own_session: bool = False
    ) -> None:
        """``own_session``: Ctrl-C reaches only this process, which stops the child in its own order."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.popen = spawn(argv, self.log_path, env, own_session=own_session)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in what the child has printed, waiting up to ``timeout`` seconds for
        it (a command's sign-in code, the URL it serves at); fails with its output as soon as it exits
        without printing it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()  # before the read: whatever it printed before it exited is in the log
            text = self.log_text()
            if found := re.search(pattern, text):
                return found
            if exited or time.monotonic() > deadline:
                why = f"exited ({self.popen.returncode})" if exited else f"ran {timeout}s"
                raise AssertionError(f"{self.name} {why} without printing {pattern!r}; it printed:\n{text[-3000:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """``sig`` if it still runs, SIGKILL if it has not exited ``timeout`` seconds later; its exit status
        (negative: the signal that ended it)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")
