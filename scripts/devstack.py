"""Bring the whole local stack up, print the URL to open, and stop everything on Ctrl-C.

Embedded defaults only (no Auth0 account, no database), laid out like production behind the edge:

- the edge (nginx and its controller) on loopback, HTTPS 8443 and HTTP 8088 (redirecting), with the dev
  domains ``localhost`` / ``docs.localhost`` (homepage, docs, downloads) and ``app.localhost`` (the chat
  app, ``/api/`` and ``/ws/``), serving a self-signed bootstrap certificate;
- static-site and flutter-app (the static server) behind it, on loopback ports;
- api-backend with the development auth issuer (``DEV_AUTH=true``, keys in ``.dev/``) mounted at
  ``/api/dev-issuer``, so the app, the API and the sign-in share one origin: https://app.localhost:8443;
- a bridge connected to api-backend with a dev token;
- when no Ollama answers on 127.0.0.1:11434, a real small model (SmolLM2-135M on llama.cpp, built once and
  cached by ``ctllm-local-model``) for the bridge to serve.

``--no-edge`` keeps only the model, api-backend and the bridge (the API on http://127.0.0.1:8080).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cloudtolocalllm.devkit import local_model
from cloudtolocalllm.devkit.edge_config import pools, write_edge_config
from cloudtolocalllm.devkit.supervise import Service, Supervisor

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OLLAMA_URL = "http://127.0.0.1:11434"
APP_HOST, DOCS_HOST, HOME_HOST = "app.localhost", "docs.localhost", "localhost"
CLIENT_ID, AUDIENCE = "cloudtolocalllm-web", "cloudtolocalllm-dev"


def say(message: str) -> None:
    print(f"devstack: {message}", file=sys.stderr, flush=True)


def _answers(url: str, token: str | None = None, expect: bytes = b"") -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310 - loopback URLs only
            return bool(response.status == 200 and expect in response.read())
    except (urllib.error.URLError, OSError):
        return False


def edge_get(port: int, host: str, path: str, *, tls: bool = True) -> tuple[int, bytes]:
    """GET through the edge on loopback with the dev host name (Python does not resolve *.localhost)."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the edge's self-signed bootstrap certificate, on loopback
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path, headers={"Host": host if port in (80, 443) else f"{host}:{port}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _edge_routes_answer(port: int) -> bool:
    try:
        return all(
            edge_get(port, host, path)[0] == 200
            for host, path in ((APP_HOST, "/"), (HOME_HOST, "/"), (DOCS_HOST, "/docs/"))
        )
    except OSError:
        return False


# Content builds ----------------------------------------------------------------------------------------


def _fingerprint(paths: Iterable[Path], *extra: str) -> str:
    digest = hashlib.sha256("\0".join(extra).encode())
    for top in paths:
        if not top.exists():
            continue
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(ROOT)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _build_if_stale(name: str, out: Path, sources: list[Path], build: Callable[[Path], None], *extra: str) -> None:
    """Rebuild ``out`` only when its sources changed since the last build (a stamp file records them)."""
    stamp = out.parent / f".{out.name}.stamp"
    fingerprint = _fingerprint(sources, *extra)
    if out.is_dir() and stamp.is_file() and stamp.read_text() == fingerprint:
        say(f"{name} content is up to date ({out.relative_to(ROOT) if out.is_relative_to(ROOT) else out})")
        return
    say(f"building the {name} content ...")
    started = time.monotonic()
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    stamp.write_text(fingerprint)
    say(f"built the {name} content in {time.monotonic() - started:.1f}s")


def _run_quiet(command: list[str], log: Path) -> None:
    with log.open("ab") as sink:
        if subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode:
            raise SystemExit(f"devstack: {' '.join(command[:3])} ... failed; see {log}")


def build_content(content: Path, logs: Path, app_url: str) -> tuple[Path, Path]:
    content.mkdir(parents=True, exist_ok=True)
    log = logs / "build.log"
    app_dir, site_dir = content / "flutter-app", content / "static-site"

    def build_app(out: Path) -> None:
        _run_quiet([sys.executable, "scripts/build_chat_app.py", str(out)], log)

    chat = ROOT / "apps" / "chat"  # not node_modules: `npm ci` fills it from package-lock.json
    chat_sources = [p for p in chat.iterdir() if p.name != "node_modules"] + [ROOT / "scripts" / "build_chat_app.py"]
    _build_if_stale("chat app", app_dir, chat_sources, build_app)

    downloads = ROOT / "dist" / "downloads"
    if not (downloads / "index.json").is_file():
        say("no dist/downloads yet: packaging the bridge (.deb and wheels) with `nox -s package-bridge` ...")
        nox = shutil.which("nox")
        _run_quiet([nox, "-s", "package-bridge"] if nox else ["uvx", "nox", "-s", "package-bridge"], log)

    def build_site(out: Path) -> None:
        docs = out.with_name(out.name + ".mkdocs")
        shutil.rmtree(docs, ignore_errors=True)
        mkdocs = [str(BIN / "mkdocs"), "build", "--strict", "--quiet", "-f", "packaging/mkdocs-site.yml"]
        _run_quiet([*mkdocs, "--site-dir", str(docs)], log)
        build = [sys.executable, "scripts/build_static_site.py", "--docs", str(docs), "--downloads", str(downloads)]
        _run_quiet([*build, "--out", str(out), "--app-url", app_url], log)
        shutil.rmtree(docs, ignore_errors=True)

    site_sources = [ROOT / p for p in ("docs", "homepage", "packaging", "scripts/build_static_site.py", "mkdocs.yml")]
    _build_if_stale("homepage, docs and downloads", site_dir, [*site_sources, downloads], build_site, app_url)
    return app_dir, site_dir


def write_app_config(app_dir: Path, issuer: str) -> None:
    """The deployment's config.json: the dev issuer, same-origin API (apiBase empty), as in production."""
    config = {
        "issuer": issuer,
        "clientId": CLIENT_ID,
        "audience": AUDIENCE,
        "apiBase": "",
        "scope": "openid profile email offline_access",
        "statusIntervalMs": 5000,
    }
    (app_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (app_dir / "config.json.gz").unlink(missing_ok=True)  # the build's copy holds the placeholder config


def edge_config(args: argparse.Namespace, runtime: Path) -> dict[str, Any]:
    """Production's routing and headers; loopback ports, paths, the dev certificate and the issuer differ."""
    from cloudtolocalllm.edge.config import DEFAULT_CSP  # the .venv has the workspace; only the edge needs it

    # The app's token requests go to the dev issuer on api-backend's loopback origin (see main()).
    csp = DEFAULT_CSP.replace("connect-src 'self'", f"connect-src 'self' http://127.0.0.1:{args.api_port}")
    return {
        "domain": "localhost",
        "listen": {
            "addresses": ["127.0.0.1"],
            "http_port": args.http_port,
            "https_port": args.https_port,
            "public_https_port": args.https_port,
        },
        "tls": {
            # Missing on purpose: the edge writes and serves its self-signed bootstrap certificate.
            "certificate": f"{runtime}/tls/fullchain.pem",
            "certificate_key": f"{runtime}/tls/privkey.pem",
            # HSTS is per host name, not per port: a dev stack must not pin http://localhost to HTTPS.
            "hsts_max_age": 0,
        },
        "acme": {"webroot": f"{runtime}/acme"},
        "headers": {"content_security_policy": csp},
        "upstreams": pools(
            {
                "static-site": [f"127.0.0.1:{args.site_port}"],
                "flutter-app": [f"127.0.0.1:{args.app_port}"],
                "api-backend": [f"127.0.0.1:{args.api_port}"],
            }
        ),
        "health_checks": {"interval": 2},
        "logging": {"access_log": "/dev/stdout"},
        "nginx": {
            "user": getpass.getuser() if os.geteuid() == 0 else None,
            "runtime_dir": f"{runtime}/run",
            "worker_processes": "1",
            "worker_connections": 1024,
        },
    }


# The stack -----------------------------------------------------------------------------------------------


def _local_model(args: argparse.Namespace) -> Service | None:
    """The model to serve: the user's own Ollama if it runs, else SmolLM2 on llama.cpp."""
    if not args.bundled_model and _answers(OLLAMA_URL + "/api/version"):
        say(f"using the Ollama already running at {OLLAMA_URL}")
        return None
    say("no Ollama on 127.0.0.1:11434; preparing the bundled small model")
    build: str | None = args.model_build

    def launch(log: Path) -> subprocess.Popen[bytes]:
        # Builds llama.cpp once (minutes, with progress lines), then reuses the cached build. Ready means it
        # answered one real completion; a build that dies there is replaced by a safer one (see local_model).
        nonlocal build
        try:
            proc, build = local_model.start_first_working(args.model_port, log, say, build=build)
        except local_model.PortTaken as exc:
            raise SystemExit(f"devstack: the bundled model cannot start: {exc} (--model-port N)") from None
        except local_model.LocalModelError as exc:
            raise SystemExit(f"devstack: the bundled model cannot start: {exc}") from None
        say(f"the bundled model runs its {build} build")
        return proc

    url = f"http://127.0.0.1:{args.model_port}/v1/models"
    return Service("local-model", [], lambda: _answers(url), timeout_s=120, launch=launch)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--https-port", type=int, default=8443, help="the edge's HTTPS port (the URL to open)")
    parser.add_argument("--http-port", type=int, default=8088, help="the edge's HTTP port (redirects to HTTPS)")
    parser.add_argument("--edge-admin-port", type=int, default=9188, help="the edge controller's /ready, /status")
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--app-port", type=int, default=8090, help="flutter-app (the chat app's static server)")
    parser.add_argument("--site-port", type=int, default=8091, help="static-site (homepage, docs, downloads)")
    parser.add_argument("--model-port", type=int, default=8765)
    parser.add_argument(
        "--model-build",
        choices=("portable", "baseline", "native"),
        help=f"the bundled model's llama.cpp build (default: ${local_model.BUILD_ENV}, else portable)",
    )
    parser.add_argument("--user", default="dev-user", help="the dev user the bridge and token belong to")
    parser.add_argument("--no-edge", action="store_true", help="only the model, api-backend and the bridge")
    parser.add_argument(
        "--bundled-model", action="store_true", help="serve the bundled small model even if an Ollama answers"
    )
    parser.add_argument(
        "--dev-dir", type=Path, default=ROOT / ".dev", help="state, logs, content and the edge's runtime (.dev)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    dev = args.dev_dir.resolve()
    edge = not args.no_edge
    api_url = f"http://127.0.0.1:{args.api_port}"
    port_suffix = "" if args.https_port == 443 else f":{args.https_port}"
    app_url = f"https://{APP_HOST}{port_suffix}/"
    # The dev issuer is reached at api-backend's own loopback origin, not through the edge: its discovery
    # document builds the token endpoint from the request's scheme and Host, which behind the edge are
    # http and app.localhost without the port (api-backend reads no X-Forwarded-* headers). The app,
    # /api/ and /ws/ still share one origin through the edge, as in production.
    issuer = f"{api_url}/dev-issuer"
    dev_env = {
        **os.environ,
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(dev / "issuer"),
        "DEV_ISSUER_URL": issuer,
        "DEV_AUDIENCE": AUDIENCE,
        "DEV_CLIENT_ID": CLIENT_ID,
    }
    if edge:
        dev_env["DEV_REDIRECT_URIS"] = app_url
    logs = dev / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(logs, dev_env, say)

    def stop_all(*_: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        supervisor.stop_all()
        say("stopped everything it started")
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        _run_stack(args, dev, edge, api_url, app_url, issuer, dev_env, supervisor, logs)
    except SystemExit as exc:
        if supervisor.parts and exc.code not in (0, None):
            print(exc.code, file=sys.stderr)
            stop_all()
        raise


def _run_stack(
    args: argparse.Namespace,
    dev: Path,
    edge: bool,
    api_url: str,
    app_url: str,
    issuer: str,
    dev_env: dict[str, str],
    supervisor: Supervisor,
    logs: Path,
) -> None:
    start = supervisor.start

    def mint(ttl_s: int) -> str:
        return subprocess.run(
            [str(BIN / "cloudtolocalllm-dev-issuer"), "token", "--sub", args.user, "--ttl", str(ttl_s)],
            env=dev_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    if edge:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise SystemExit("devstack: the edge needs nginx: run scripts/system-deps.sh (or use --no-edge)")
        app_dir, site_dir = build_content(dev / "content", logs, app_url)
        write_app_config(app_dir, issuer)

    model = _local_model(args)
    backend_url, backend_kind = OLLAMA_URL, "ollama"
    if model is not None:
        start(model)
        backend_url, backend_kind = f"http://127.0.0.1:{args.model_port}", "openai"

    start(
        Service(
            "api-backend",
            [str(BIN / "cloudtolocalllm-api-backend")],
            lambda: _answers(f"{api_url}/health"),
            # API keys: SQLite in the dev folder (kept across restarts, removed with it).
            env={"API_PORT": str(args.api_port), "API_DATA_DIR": str(dev / "api-backend")},
        )
    )

    token_file = dev / "bridge-token"
    token_file.write_text(mint(12 * 3600))
    token_file.chmod(0o600)
    token = mint(3600)
    start(
        Service(
            "bridge",
            [
                str(BIN / "cloudtolocalllm-bridge"),
                "run",
                "--cloud",
                api_url,
                "--token-file",
                str(token_file),
                "--backend",
                backend_url,
                "--backend-kind",
                backend_kind,
                "--state-dir",
                str(dev / "bridge"),
                "--name",
                "dev-bridge",
            ],
            # healthy once api-backend lists it for the dev user
            lambda: _answers(f"{api_url}/api/bridge/status", token, b'"name":"dev-bridge"'),
        )
    )

    if edge:
        for name, port, root, spa in (
            ("flutter-app", args.app_port, app_dir, "true"),
            ("static-site", args.site_port, site_dir, "false"),
        ):
            start(
                Service(
                    name,
                    [str(BIN / "cloudtolocalllm-static-site")],
                    lambda port=port: _answers(f"http://127.0.0.1:{port}/health"),  # type: ignore[misc]
                    env={
                        "STATIC_ROOT": str(root),
                        "STATIC_PORT": str(port),
                        "STATIC_SPA": spa,
                        "STATIC_SERVICE_NAME": name,
                        "STATIC_GRACEFUL_TIMEOUT_S": "2",
                    },
                )
            )
        edge_dir = dev / "edge"
        (edge_dir / "acme").mkdir(parents=True, exist_ok=True)
        write_edge_config(edge_dir / "edge.toml", edge_config(args, edge_dir), written_by="scripts/devstack.py")
        start(
            Service(
                "edge",
                [str(BIN / "cloudtolocalllm-edge")],
                lambda: (
                    _answers(f"http://127.0.0.1:{args.edge_admin_port}/ready") and _edge_routes_answer(args.https_port)
                ),
                env={
                    "EDGE_CONFIG": str(edge_dir / "edge.toml"),
                    "EDGE_ADMIN_PORT": str(args.edge_admin_port),
                    "EDGE_STOP_TIMEOUT": "5",
                },
                timeout_s=60,
            )
        )

    _print_banner(args, edge, api_url, app_url, backend_url, backend_kind, token, logs)
    supervisor.watch()


def _print_banner(
    args: argparse.Namespace,
    edge: bool,
    api_url: str,
    app_url: str,
    backend_url: str,
    backend_kind: str,
    token: str,
    logs: Path,
) -> None:
    port_suffix = "" if args.https_port == 443 else f":{args.https_port}"
    browser = ""
    if edge:
        browser = f"""
Open  {app_url}  and sign in: the dev sign-in page is prefilled with '{args.user}'; press "Sign in",
pick the model and chat. The certificate is the edge's self-signed development one, so the browser
warns once: choose "Advanced" -> "Proceed to app.localhost" (curl: -k). *.localhost resolves to this
machine in Chromium, Firefox and curl; on other clients use 127.0.0.1 with a Host header.

  chat app        {app_url}   (API at {app_url}api/, bridges at wss://{APP_HOST}{port_suffix}/ws/)
  homepage        https://{HOME_HOST}{port_suffix}/
  docs            https://{DOCS_HOST}{port_suffix}/docs/
  downloads       https://{HOME_HOST}{port_suffix}/downloads/
  edge status     http://127.0.0.1:{args.edge_admin_port}/status   (plain HTTP :{args.http_port} redirects)
"""
    print(
        f"""
CloudToLocalLLM dev stack is running (Ctrl-C stops everything it started).
{browser}
  api-backend     {api_url}   (Ollama base URL: {api_url}/api/ollama, OpenAI: {api_url}/api/ollama/v1)
  bridge          dev-bridge -> {backend_url} ({backend_kind})
  bridge status   curl -H "Authorization: Bearer $TOKEN" {api_url}/api/bridge/status
  logs            {logs}/*.log (one JSON object per line)

A token for '{args.user}' (1 h; mint more with .venv/bin/cloudtolocalllm-dev-issuer token --sub {args.user}):

  export TOKEN={token}

Try it:

  .venv/bin/python - <<'PY'
import os, ollama
client = ollama.Client(host="{api_url}/api/ollama", headers={{"Authorization": "Bearer " + os.environ["TOKEN"]}})
model = client.list().models[0].model
for part in client.chat(model=model, messages=[{{"role": "user", "content": "Say hello"}}], stream=True):
    print(part.message.content, end="", flush=True)
print()
PY

  .venv/bin/python - <<'PY'
import os, openai
client = openai.OpenAI(base_url="{api_url}/api/ollama/v1", api_key=os.environ["TOKEN"])
model = client.models.list().data[0].id
answer = client.chat.completions.create(model=model, messages=[{{"role": "user", "content": "Say hello"}}])
print(answer.choices[0].message.content)
PY
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
