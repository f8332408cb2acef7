"""A real bridge and its local backend inside the Swarm test's namespace (``nsenter --net=... python ...``).

Starts the devkit's Ollama contract double on the namespace's loopback, then ``cloudtolocalllm-bridge
run`` against ``CLOUD`` with the token in ``CLOUDTOLOCALLLM_TOKEN``; prints ``ready <model>`` and runs until
SIGTERM, which it passes on to the bridge.

    python bridge_in_netns.py http://127.0.0.1:8080 STATE_DIR
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from cloudtolocalllm.devkit.launch import Proc
from cloudtolocalllm.devkit.ollama import LLAMA32 as MODEL
from cloudtolocalllm.devkit.ollama import contract_double


def main() -> int:
    cloud, state_dir = sys.argv[1], Path(sys.argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contract_double() as backend:
        argv = [sys.executable, "-m", "cloudtolocalllm.bridge", "run", "--cloud", cloud, "--backend", backend.url,
                "--state-dir", str(state_dir), "--name", "swarm-test", "--status-interval", "1"]  # fmt: skip
        # Its log beside its state, not in the test's pipe, which nobody reads while the test runs.
        bridge = Proc("bridge", argv, {}, state_dir.parent)
        print(f"ready {MODEL}", flush=True)
        while not stop.wait(0.5):
            if not bridge.alive():  # the bridge gave up: say so instead of pretending to run
                print(bridge.log_text()[-3000:], file=sys.stderr)
                return int(bridge.popen.returncode)
        return bridge.stop(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
