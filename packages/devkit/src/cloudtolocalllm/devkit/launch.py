"""Where every child process of the tooling starts: its output appended to a log file.

Standard library only: the local model's launcher (run from nox's own environment) uses it as well as the
tests, the benchmarks (through :mod:`cloudtolocalllm.devkit.procs`) and the dev stack's supervisor.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


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
