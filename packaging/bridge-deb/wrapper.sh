#!/bin/sh
# /usr/bin/cloudtolocalllm-bridge: runs the bridge from its private virtualenv (made by the package's postinst).
VENV=/opt/cloudtolocalllm-bridge
if [ ! -x "$VENV/bin/cloudtolocalllm-bridge" ] || [ ! -e "$VENV/bin/python3" ]; then
    echo "cloudtolocalllm-bridge: $VENV is missing or broken (was python3 upgraded?);" \
        "rebuild it with: sudo dpkg-reconfigure cloudtolocalllm-bridge" >&2
    exit 1
fi
exec "$VENV/bin/cloudtolocalllm-bridge" "$@"
