#!/bin/sh
# See docs/deploy/guide.md. A thin wrapper: the work is done by deploy.py (standard-library Python 3).
set -eu
exec python3 "$(dirname "$0")/deploy.py" update "$@"
