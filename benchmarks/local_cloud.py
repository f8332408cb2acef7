"""What the tunnel benchmarks share: the fast local backend as a process, and dev-issuer auth for api-backend."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.procs import Proc, wait_for  # noqa: E402

from cloudtolocalllm.core.auth import DevIssuer  # noqa: E402

ISSUER = "http://127.0.0.1/dev-issuer"
AUDIENCE = "cloudtolocalllm-bench"


def start_fast_backend(log_dir: Path) -> tuple[Proc, int]:
    """benchmarks/fast_backend.py in its own process; returns it and the port it printed."""
    backend = Proc("fast-backend", [sys.executable, str(REPO / "benchmarks" / "fast_backend.py")], {}, log_dir)
    try:
        port_text = wait_for(lambda: backend.log_text().strip(), 10, "the fast backend's port")
    except BaseException:
        backend.stop()
        raise
    return backend, int(port_text.splitlines()[0])


def dev_auth(tmp: Path) -> tuple[dict[str, str], DevIssuer]:
    """api-backend's environment for the embedded dev issuer under ``tmp``, and that issuer (to mint tokens)."""
    env = {
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(tmp / "issuer"),
        "DEV_ISSUER_URL": ISSUER,
        "DEV_AUDIENCE": AUDIENCE,
    }
    return env, DevIssuer(tmp / "issuer", issuer=ISSUER, audience=AUDIENCE)
