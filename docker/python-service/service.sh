#!/bin/sh
# The entry point of the Python service image: apply the image's settings (SERVICE_ENV, "NAME=value ...")
# where `docker run -e` did not set them, then become SERVICE_COMMAND (exec: it is PID 1 and gets the signals).
set -eu
for setting in ${SERVICE_ENV:-}; do
    name=${setting%%=*}
    if ! printenv "$name" >/dev/null; then
        export "$setting"
    fi
done
exec "$SERVICE_COMMAND" "$@"
