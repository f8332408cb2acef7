"""``python -m cloudtolocalllm.bridge`` is ``cloudtolocalllm-bridge``."""

from cloudtolocalllm.bridge.cli import main

main()
