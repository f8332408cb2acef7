"""Container images: the offline base image, a private Docker engine, build contexts and image tests.

Used by the ``build-<image>``, ``test-<image>`` and ``publish-<image>`` nox sessions; also a small CLI::

    python3 scripts/images.py dockerd start|stop|status   # a private dockerd (prints DOCKER_HOST)
    python3 scripts/images.py base                        # the local base image (mmdebstrap + docker import)
    python3 scripts/images.py registry [--port 5000]      # Debian's docker-registry on 127.0.0.1, until Ctrl-C

Only publishing needs an image registry. The base image is a Debian bookworm root built by mmdebstrap from
the Debian mirror (apt over plain HTTP) and imported once; the tarball is cached so a rebuilt engine
imports it again in a second. The private engine keeps its state in the cache directory too, so images
survive between sessions while no daemon is left running after one.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_BASE = "cloudtolocalllm-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Debian's client: it has the BuildKit builder built in (a newer client elsewhere on PATH may lack buildx).
DOCKER_CANDIDATES = ("/usr/bin/docker", "docker")


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "cloudtolocalllm"


def docker_binary() -> str:
    for candidate in DOCKER_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise SystemExit("images: no docker client found (apt-get install docker.io)")


# --- the private engine -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """Where a private dockerd keeps everything; all paths derive from one state directory."""

    state: Path = field(default_factory=lambda: cache_dir() / "dockerd")

    @property
    def socket(self) -> Path:
        return self.state / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.state / "dockerd.pid"

    @property
    def exec_root(self) -> Path:
        return self.state / "exec"

    @property
    def log(self) -> Path:
        return self.state / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def pid(self) -> int | None:
        """The daemon's PID if the pidfile names a live dockerd, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return None
        return pid if cmdline and cmdline[0].endswith(b"dockerd") else None

    def ping(self) -> bool:
        conn = _UnixHTTPConnection(str(self.socket))
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def start(self, timeout: float = 30.0) -> bool:
        """Start the daemon unless it already answers; True if this call started it."""
        if self.pid() and self.ping():
            return False
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise SystemExit("images: dockerd not found (apt-get install docker.io)")
        self.state.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        # No bridge and no iptables rules: containers under test use --network=host, builds use
        # --network=host, and nothing is left behind in the host's firewall or links.
        args = [
            dockerd,
            f"--host={self.host}",
            f"--data-root={self.state / 'data'}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--shutdown-timeout=5",
            "--log-level=warn",
        ]
        with self.log.open("ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        _started[proc.pid] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"images: dockerd exited with {proc.returncode}; see {self.log}")
            if self.ping():
                return True
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"images: dockerd did not answer within {timeout:.0f}s; see {self.log}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the daemon by its PID (and its containerd if it outlives it); True if one was running."""
        pid = self.pid()
        containerd = _pid_from(self.exec_root / "containerd" / "containerd.pid", b"containerd")
        if pid is None and containerd is None:
            return False
        for target in (pid, containerd):
            if target is not None:
                _terminate(target, timeout)
                if target in _started:  # reaped by _terminate; poll() lets the Popen object know
                    _started.pop(target).poll()
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        # dockerd leaves its bind mount of the host's network namespace behind (--network=host containers).
        netns = self.exec_root / "netns" / "default"
        if any(line.split()[1] == str(netns) for line in Path("/proc/self/mounts").read_text().splitlines()):
            subprocess.run(["umount", str(netns)], check=False)
        return True


# The daemons this process started, so their Popen objects live (and are reaped) until stop().
_started: dict[int, subprocess.Popen[bytes]] = {}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=2)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()  # not yet self.sock, so close() would not
            raise
        self.sock = sock


def _pid_from(pidfile: Path, name: bytes) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return None
    return pid if name in cmdline.split(b"\0")[0] else None


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reap it when this process started it
        os.waitpid(pid, 0)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


@contextlib.contextmanager
def docker_env() -> Iterator[dict[str, str]]:
    """The environment for docker commands: the caller's DOCKER_HOST if set, else a private engine that is
    stopped again on exit if this block started it."""
    if os.environ.get("DOCKER_HOST"):
        yield {"DOCKER_HOST": os.environ["DOCKER_HOST"], "DOCKER_BUILDKIT": "1"}
        return
    engine = Engine()
    started = engine.start()
    try:
        yield engine.env()
    finally:
        if started:
            engine.stop()


# --- the base image ----------------------------------------------------------------------------------


def docker(env: Mapping[str, str], *args: str, check: bool = True, capture: bool = False) -> str:
    result = subprocess.run(
        [docker_binary(), *args],
        env={**os.environ, **env},
        check=check,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return (result.stdout or "").strip()


def image_exists(env: Mapping[str, str], name: str) -> bool:
    result = subprocess.run(
        [docker_binary(), "image", "inspect", name],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


def ensure_base(env: Mapping[str, str], name: str = LOCAL_BASE) -> str:
    """Import the local base image (building its root tarball with mmdebstrap once) unless present."""
    if image_exists(env, name):
        return name
    tarball = cache_dir() / "base-bookworm.tar"
    if not tarball.exists():
        if shutil.which("mmdebstrap") is None:
            raise SystemExit("images: mmdebstrap not found (apt-get install mmdebstrap)")
        partial = tarball.with_name("base-bookworm.partial.tar")  # mmdebstrap picks the format by suffix
        tarball.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=apt",
                f"--include={','.join(BASE_PACKAGES)}",
                "--aptopt=APT::Install-Recommends false",
                # merged /usr set up by mmdebstrap's own hook instead of the usrmerge package (and its perl)
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                # What the official slim images drop too: documentation, man pages and apt lists.
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                "bookworm",
                str(partial),
            ],
            check=True,
        )
        partial.rename(tarball)
    docker(env, "import", "--change", 'CMD ["/bin/bash"]', str(tarball), name, capture=True)
    return name


# --- image tests ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain-HTTP GET to a loopback address; redirects are answers here, not followed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.request("GET", parts.path or "/", headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, _lower(response.headers), response.read()
    finally:
        conn.close()


def _lower(headers: Mapping[str, str] | http.client.HTTPMessage) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def wait_healthy(env: Mapping[str, str], container: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        state = json.loads(docker(env, "inspect", "--format", "{{json .State}}", container, capture=True))
        status = (state.get("Health") or {}).get("Status", "")
        if status == "healthy":
            return
        if not state.get("Running"):
            raise AssertionError(f"{container} exited with {state.get('ExitCode')}")
        time.sleep(0.25)
    raise AssertionError(f"{container} not healthy after {timeout:.0f}s (last status {status!r})")


def main_process_uid(env: Mapping[str, str], container: str) -> int:
    status = docker(env, "exec", container, "cat", "/proc/1/status", capture=True)
    real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    return int(real_uid)


def root_is_read_only(env: Mapping[str, str], container: str) -> bool:
    result = subprocess.run(
        [docker_binary(), "exec", container, "touch", "/probe"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode != 0


@contextlib.contextmanager
def running(env: Mapping[str, str], image: str, run_args: list[str], command: list[str]) -> Iterator[str]:
    """A container of ``image`` under the test rules: read-only root, host network, no capabilities."""
    name = f"ctllm-test-{image.rsplit('/', 1)[-1].split(':', 1)[0]}-{os.getpid()}"
    docker(
        env,
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--network=host",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--health-interval=1s",
        "--health-start-period=30s",
        *run_args,
        image,
        *command,
        capture=True,
    )
    try:
        yield name
    except BaseException:
        docker(env, "logs", "--tail", "50", name, check=False)
        raise
    finally:
        docker(env, "rm", "--force", name, check=False, capture=True)


# --- the images ---------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "cloudtolocalllm"
# Every image built from the workspace's wheels is a target of this one Dockerfile (they share its builder stage).
WHEELS_DOCKERFILE = "docker/Dockerfile"
# Dependency wheels for each Python a base may carry: the local base (Debian bookworm) has 3.11, the official
# slim image 3.12. pip inside the build picks the matching ones.
PYTHON_VERSIONS = ("3.11", "3.12")


@dataclass(frozen=True)
class Service:
    """A Python service's parameters for the python-service target of docker/Dockerfile (its build arguments)."""

    command: str  # SERVICE_COMMAND: the console script the entry point execs
    port_variable: str  # SERVICE_PORT_VARIABLE: the setting that holds the port (8080 in the image)
    env: tuple[str, ...]  # SERVICE_ENV: the other settings the image sets, NAME=value (no spaces)
    title: str  # the OCI title and description labels
    description: str

    def build_args(self) -> dict[str, str]:
        return {
            "SERVICE_COMMAND": self.command,
            "SERVICE_PORT_VARIABLE": self.port_variable,
            "SERVICE_ENV": " ".join(self.env),
            "TITLE": self.title,
            "DESCRIPTION": self.description,
        }


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one image's build context, and which Dockerfile (and target) builds it."""

    package: str  # the workspace package whose version tags the image
    wheels: bool = True  # install the package's wheels (certbot is Debian's)
    content: str | None = None  # a folder under dist/ copied to content/
    files: tuple[str, ...] = ()  # repository files copied next to the Dockerfile's COPY lines
    content_session: str | None = None  # the nox session that builds `content`
    service: Service | None = None  # a Python service: docker/Dockerfile's python-service target, these arguments

    def dockerfile(self, image: str) -> str:
        return WHEELS_DOCKERFILE if self.wheels else f"docker/{image}/Dockerfile"

    def target(self, image: str) -> str | None:
        """The stage of docker/Dockerfile that is this image; None for an image with a Dockerfile of its own."""
        if not self.wheels:
            return None
        return "python-service" if self.service else image


_STATIC = ("STATIC_ROOT=/srv/www", "STATIC_HOST=0.0.0.0")

IMAGES: dict[str, ImageSpec] = {
    "api-backend": ImageSpec(
        "cloudtolocalllm-bridge-api",
        service=Service(
            "cloudtolocalllm-api-backend",
            "API_PORT",
            # API keys' SQLite database (unless DATABASE_URL is set): the image's own folder, for a volume.
            ("API_HOST=0.0.0.0", "API_DATA_DIR=/var/lib/cloudtolocalllm"),
            "cloudtolocalllm api-backend",
            "Bridge WebSockets and the streaming Ollama/OpenAI relay",
        ),
    ),
    "static-site": ImageSpec(
        "cloudtolocalllm-static-site",
        content="static-site",
        content_session="build-static-site-content",
        service=Service(
            "cloudtolocalllm-static-site",
            "STATIC_PORT",
            _STATIC,
            "cloudtolocalllm static-site",
            "The homepage, the documentation and the downloads",
        ),
    ),
    "flutter-app": ImageSpec(
        "cloudtolocalllm-static-site",
        content="flutter-app",
        content_session="build-flutter-app-content",
        service=Service(
            "cloudtolocalllm-static-site",
            "STATIC_PORT",
            (*_STATIC, "STATIC_SPA=true", "STATIC_SERVICE_NAME=flutter-app"),
            "cloudtolocalllm flutter-app",
            "The chat web app, with the SPA fallback",
        ),
    ),
    "nginx-proxy": ImageSpec("cloudtolocalllm-edge"),
    "certbot": ImageSpec("cloudtolocalllm-edge", wheels=False, files=("packages/edge/certbot/certbot-loop.sh",)),
}


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def revision() -> str:
    """The commit, marked dirty when tracked files differ from it (such an image is not that commit)."""
    sha = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    return f"{sha}-dirty" if _git("status", "--porcelain", "--untracked-files=no") else sha


def package_version(dist: str) -> str:
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        text = pyproject.read_text()
        if f'name = "{dist}"' in text:
            for version_file in (pyproject.parent / "src").rglob("version.py"):
                for line in version_file.read_text().splitlines():
                    if line.startswith("__version__"):
                        return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit(f"images: no version found for {dist}")


def requirements_for(exported: str, python: str) -> str:
    """The lines of a ``uv export`` that any patch release of ``python`` on this machine may need, markers
    dropped. pip download evaluates markers against the host's interpreter whatever --python-version says,
    so a host 3.11.7 skipped ``async-timeout; python_full_version < '3.11.3'`` that bookworm's 3.11.2 needs."""
    from packaging.markers import Marker, default_environment

    kept: list[str] = []
    for block in re.sub(r"\\\n\s*", " ", exported).splitlines():
        requirement = block.split("#", 1)[0].strip()
        if not requirement:
            continue
        spec, _, rest = requirement.partition(" --hash")
        name, _, marker = spec.partition(";")
        if marker.strip():
            host = {key: str(value) for key, value in default_environment().items()}
            environments = [
                {**host, "python_version": python, "python_full_version": f"{python}.{patch}"} for patch in (0, 99)
            ]
            if not any(Marker(marker.strip()).evaluate(env) for env in environments):
                continue
        kept.append(f"{name.strip()} --hash{rest}" if rest else name.strip())
    return "\n".join(kept) + "\n"


def stage_context(image: str, pip: str) -> Path:
    """Fill build/images/<image>/ with what the Dockerfile copies: the lock file's export, the dependency
    wheels, the workspace wheels, content, files and, for a Python service, its entry point."""
    spec = IMAGES[image]
    context = ROOT / "build" / "images" / image
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    if spec.wheels:
        requirements = context / "requirements.txt"
        requirements.write_text(exported_requirements(spec.package))
        machine = os.uname().machine
        platforms = [f"manylinux2014_{machine}", *(f"manylinux_2_{minor}_{machine}" for minor in range(17, 37))]
        for python in PYTHON_VERSIONS:
            target = requirements.with_name(f"requirements-{python}.txt")
            target.write_text(requirements_for(requirements.read_text(), python))
            subprocess.run(
                [
                    pip, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--require-hashes",
                    "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
                    *(f"--platform={platform}" for platform in platforms),
                    "--dest", str(context / "wheels"), "--requirement", str(target),
                ],
                check=True,
            )  # fmt: skip
            target.unlink()
        # The package and the workspace packages it needs (core): everything uv export left out.
        workspace = [line.split()[-1] for line in _workspace_members(spec.package)]
        for dist in (spec.package, *workspace):
            subprocess.run(
                ["uv", "build", "--quiet", "--package", dist, "--wheel", "--out-dir", str(context / "app")],
                cwd=ROOT,
                check=True,
            )
    if spec.content:
        source = ROOT / "dist" / spec.content
        if not (source / "index.html").exists():
            raise SystemExit(f"images: {source} has no index.html; run nox -s {spec.content_session}")
        shutil.copytree(source, context / "content")
    if spec.service:  # the python-service target always copies content/ (empty for api-backend) and its entry point
        (context / "content").mkdir(exist_ok=True)
        shutil.copy2(ROOT / "docker" / "python-service" / "service.sh", context)
        (context / "service.sh").chmod(0o755)
    for name in spec.files:
        copied = Path(shutil.copy2(ROOT / name, context))
        copied.chmod(0o755 if name.endswith(".sh") else 0o644)
    return context


def exported_requirements(package: str, *, workspace: bool = False) -> str:
    """The lock file's export of what an image of ``package`` installs: its dependencies, no extra, no dev
    group (``workspace``: with the workspace packages as ``-e`` lines, else without them)."""
    return subprocess.run(
        [
            "uv", "export", "--frozen", "--package", package, "--no-dev",
            *(() if workspace else ("--no-emit-workspace",)), "--format", "requirements-txt", "--quiet",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip


def installed_distributions(image: str) -> list[str]:
    """The distributions an image installs (workspace packages included), by normalised name."""
    spec = IMAGES[image]
    names: set[str] = set()
    for line in exported_requirements(spec.package, workspace=True).splitlines():
        line = line.strip()
        if line.startswith("-e "):
            pyproject = ROOT / line.split(maxsplit=1)[1] / "pyproject.toml"
            names.add(tomllib.loads(pyproject.read_text())["project"]["name"])
        elif line and not line.startswith(("#", "--")):
            names.add(re.split(r"[=<>;\s\[]", line, maxsplit=1)[0])
    return sorted(re.sub(r"[-_.]+", "-", name).lower() for name in names)


def _workspace_members(dist: str) -> list[str]:
    """Workspace packages ``dist`` depends on, from the lock file (direct and transitive)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    editable = {p["name"]: p for p in lock["package"] if "editable" in p.get("source", {})}
    found: list[str] = []
    pending = [dist]
    while pending:
        for dep in editable[pending.pop()].get("dependencies", []):
            if dep["name"] in editable and dep["name"] not in found and dep["name"] != dist:
                found.append(dep["name"])
                pending.append(dep["name"])
    return found


def tags(image: str) -> list[str]:
    spec = IMAGES[image]
    return [f"{REPOSITORY}/{image}:{package_version(spec.package)}", f"{REPOSITORY}/{image}:{revision()}"]


def build(image: str, pip: str) -> list[str]:
    context = stage_context(image, pip)
    spec = IMAGES[image]
    source = os.environ.get("IMAGE_SOURCE") or _git("remote", "get-url", "origin")
    base = os.environ.get("IMAGE_BASE", "local")
    with docker_env() as env:
        base_args: list[str] = []
        if base == "local":
            base_args = ["--build-arg", f"BASE={ensure_base(env)}"]
        elif base != "official":
            base_args = ["--build-arg", f"BASE={base}"]
        image_tags = tags(image)
        docker(
            env,
            "build",
            "--network=host",
            "--file",
            str(ROOT / spec.dockerfile(image)),
            *(["--target", target] if (target := spec.target(image)) else []),
            *base_args,
            *(
                arg
                for name, value in (spec.service.build_args() if spec.service else {}).items()
                for arg in ("--build-arg", f"{name}={value}")
            ),
            "--build-arg",
            f"VERSION={package_version(spec.package)}",
            "--build-arg",
            f"REVISION={revision()}",
            "--build-arg",
            f"SOURCE={source}",
            *(arg for tag in image_tags for arg in ("--tag", tag)),
            str(context),
        )
        size = int(docker(env, "image", "inspect", "--format", "{{.Size}}", image_tags[0], capture=True))
        print(f"images: built {', '.join(image_tags)} ({size / 1e6:.0f} MB)")
    return image_tags


# --- image tests: run as the seed's containers run, on loopback -------------------------------------------


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check_health(base_url: str, service: str) -> None:
    status, _, body = http_get(f"{base_url}/health")
    _expect(status == 200, f"/health answered {status}")
    _expect(json.loads(body).get("service") in (service, None), f"/health names another service: {body!r}")


def _test_api_backend(port: int) -> tuple[list[str], Callable[[], None]]:
    base_url = f"http://127.0.0.1:{port}"
    # Production-style settings: an Auth0 tenant that is never contacted (no request below carries a token).
    env = [
        "API_HOST=127.0.0.1",
        f"API_PORT={port}",
        "AUTH0_DOMAIN=tenant.invalid",
        "AUTH0_AUDIENCE=https://api.invalid",
    ]

    def check() -> None:
        _check_health(base_url, "api-backend")
        status, headers, _ = http_get(f"{base_url}/api/bridge/status")
        _expect(status == 401, f"/api/bridge/status without a token answered {status}, not 401")
        _expect("Bearer" in headers.get("www-authenticate", ""), f"no Bearer challenge in {headers}")

    tmpfs = ["--tmpfs=/tmp:size=16m", "--tmpfs=/var/lib/cloudtolocalllm:uid=65532,gid=65532,size=16m"]
    return [f"--env={item}" for item in env] + tmpfs, check


def _test_static_server(port: int, service: str) -> tuple[list[str], Callable[[], None]]:
    base_url = f"http://127.0.0.1:{port}"

    def check() -> None:
        _check_health(base_url, service)
        status, headers, body = http_get(f"{base_url}/", {"Accept": "text/html"})
        _expect(status == 200 and headers.get("content-type", "").startswith("text/html"), f"/ answered {status}")
        _expect(b"<html" in body.lower() or b"<!doctype" in body.lower(), "/ is not an HTML page")
        if service == "flutter-app":  # an app route gets the app's index.html (the SPA fallback)
            status, _, route_body = http_get(f"{base_url}/chat/42", {"Accept": "text/html"})
            _expect(status == 200 and route_body == body, f"/chat/42 answered {status}, not the app")
        else:
            status, _, _ = http_get(f"{base_url}/docs/", {"Accept": "text/html"})
            _expect(status == 200, f"/docs/ answered {status}")

    return ["--env=STATIC_HOST=127.0.0.1", f"--env=STATIC_PORT={port}", "--tmpfs=/tmp:size=16m"], check


def _test_nginx_proxy(port: int) -> tuple[list[str], Callable[[], None]]:
    http_port, https_port, idle_port = free_port(), free_port(), free_port()
    config = cache_dir() / "image-tests" / f"edge-{os.getpid()}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    pools = "\n".join(
        f'[upstreams.{pool}]\ninstances = ["127.0.0.1:{idle_port}"]\n'
        for pool in ("static-site", "flutter-app", "api-backend")
    )
    config.write_text(
        f'[listen]\naddresses = ["127.0.0.1"]\nhttp_port = {http_port}\nhttps_port = {https_port}\n'
        f"public_https_port = {https_port}\n\n{pools}"
    )
    config.chmod(0o644)

    def check() -> None:
        _check_health(f"http://127.0.0.1:{port}", "edge")
        status, headers, _ = http_get(f"http://127.0.0.1:{http_port}/health", {"Host": "localhost"})
        _expect(status == 200, f"nginx's /health answered {status}")
        # A real route: the pool has no live instance, so the edge answers 503 itself, with its headers.
        status, headers, _ = http_get(f"http://127.0.0.1:{http_port}/", {"Host": "localhost"})
        _expect(status in (301, 308), f"plain HTTP was not redirected to HTTPS ({status})")
        _expect(headers.get("x-frame-options") is not None, f"no security headers on the redirect: {headers}")

    run_args = [
        f"--env=EDGE_ADMIN_PORT={port}",
        "--env=EDGE_CONFIG=/etc/cloudtolocalllm/edge.toml",
        f"--volume={config}:/etc/cloudtolocalllm/edge.toml:ro",
        "--tmpfs=/run/cloudtolocalllm-edge:size=64m,uid=65532,gid=65532,mode=0700",
        "--tmpfs=/tmp:size=16m",
    ]
    return run_args, check


TESTS: dict[str, Callable[[int], tuple[list[str], Callable[[], None]]]] = {
    "api-backend": _test_api_backend,
    "static-site": lambda port: _test_static_server(port, "static-site"),
    "flutter-app": lambda port: _test_static_server(port, "flutter-app"),
    "nginx-proxy": _test_nginx_proxy,
}


def test(image: str) -> None:
    tag = tags(image)[1]  # this commit's build
    with docker_env() as env:
        _expect(image_exists(env, tag), f"{tag} not built; run nox -s build-{image}")
        if image not in TESTS:  # certbot: no port; it must still start read-only as non-root
            output = docker(
                env, "run", "--rm", "--read-only", "--network=none", "--cap-drop=ALL",
                "--security-opt=no-new-privileges", "--tmpfs=/tmp:size=16m", "--entrypoint=sh", tag,
                "-c", "id -u && certbot --version",
                capture=True,
            )  # fmt: skip
            certbot_uid = output.splitlines()[0]
            _expect(certbot_uid != "0", "certbot runs as root")
            print(f"images: {tag}: uid {certbot_uid}, {output.splitlines()[-1]}")
            return
        port = free_port()
        run_args, check = TESTS[image](port)
        with running(env, tag, run_args, []) as container:
            wait_healthy(env, container)
            check()
            uid = main_process_uid(env, container)
            _expect(uid != 0, f"{container}'s main process runs as root")
            _expect(root_is_read_only(env, container), f"{container} could write to its root filesystem")
            print(f"images: {tag}: healthy, /health and a real request answered, uid {uid}, read-only root")


# --- publishing to a registry -------------------------------------------------------------------------

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


def registry_address() -> str:
    """REGISTRY as Docker names it (host[:port]); a clear error when it is missing or has a scheme or path."""
    registry = os.environ.get("REGISTRY", "").strip()
    if not registry:
        raise SystemExit("images: set REGISTRY to the registry to push to, e.g. REGISTRY=127.0.0.1:5000")
    if "://" in registry or "/" in registry or not urllib.parse.urlsplit(f"//{registry}").hostname:
        raise SystemExit(f"images: REGISTRY={registry!r} is not host[:port] (as in docker push <host:port>/name)")
    return registry


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def published_digest(registry: str, repository: str, tag: str) -> str | None:
    """The manifest digest the registry serves for repository:tag (HTTP API manifest HEAD); None if absent.

    Plain HTTP on loopback (Docker treats 127.0.0.0/8 as an insecure registry), HTTPS elsewhere. Only
    registries that let anyone read manifests are supported: a 401 is an error, never "not published"."""
    host = urllib.parse.urlsplit(f"//{registry}").hostname or registry
    connection_class = http.client.HTTPConnection if _is_loopback(host) else http.client.HTTPSConnection
    conn = connection_class(registry, timeout=30)
    try:
        conn.request("HEAD", f"/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
        response = conn.getresponse()
        response.read()
    except OSError as exc:
        raise SystemExit(f"images: registry {registry} did not answer: {exc}") from exc
    finally:
        conn.close()
    if response.status == 404:
        return None
    digest = response.getheader("Docker-Content-Digest")
    if response.status != 200 or not digest:
        raise SystemExit(
            f"images: {registry} answered {response.status} to a manifest HEAD for {repository}:{tag}; "
            "cannot tell whether it is published"
        )
    return digest


def _git_status() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"images: {ROOT} is not a git checkout; publishing needs one ({result.stderr.strip()})")
    return result.stdout.strip()


def publish(image: str, force: bool = False) -> str:
    """Push this commit's build as <REGISTRY>/<name>:<version> and :<commit>; return the manifest digest.

    Refuses a tree with changes (tracked or untracked, .gitignore'd files aside) and a version the registry
    already has, unless forced: a version tag must keep naming what was first published under it."""
    registry = registry_address()
    dirty = _git_status()
    if dirty and not force:
        raise SystemExit(
            f"images: refusing to publish {image} from a tree with uncommitted changes (commit them, or --force):\n"
            + dirty
        )
    local_tags = tags(image)
    repository, version = local_tags[0].split(":", 1)
    # The commit's tag names this build; the engine's <version> tag moves with any checkout's build of it.
    build = local_tags[1]
    with docker_env() as env:
        if not image_exists(env, build):
            raise SystemExit(f"images: {build} not built; run nox -s build-{image}")
        existing = published_digest(registry, repository, version)
        if existing and not force:
            raise SystemExit(
                f"images: {registry}/{repository}:{version} is already published ({existing}); release a new "
                "version (docs/deploy/releases.md), or --force to point the tag at this build"
            )
        digests: set[str] = set()
        for tag in local_tags:
            remote = f"{registry}/{tag}"
            docker(env, "tag", build, remote)
            docker(env, "push", "--quiet", remote, capture=True)
            digest = published_digest(registry, repository, remote.rsplit(":", 1)[1])
            if digest is None:
                raise SystemExit(f"images: {registry} has no {remote} right after the push")
            repo_digests = json.loads(
                docker(env, "image", "inspect", "--format", "{{json .RepoDigests}}", remote, capture=True)
            )
            _expect(
                f"{registry}/{repository}@{digest}" in repo_digests,
                f"the registry serves {digest} for {remote}, the engine recorded {repo_digests}",
            )
            print(f"images: pushed {remote} {digest}")
            digests.add(digest)
        _expect(len(digests) == 1, f"one image pushed under two digests: {digests}")
    return digests.pop()


@contextlib.contextmanager
def local_registry(storage: Path, port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 (a free port unless given), storing under ``storage``; yields
    its address (host:port) and stops it on exit."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise SystemExit("images: docker-registry not found (apt-get install docker-registry)")
    port = port or free_port()
    storage.mkdir(parents=True, exist_ok=True)
    config = storage / "config.yml"
    # JSON is YAML: no YAML writer needed. No auth, deletes allowed, nothing but loopback.
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(storage / "data")}, "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    address = f"127.0.0.1:{port}"
    with (storage / "registry.log").open("ab") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"images: docker-registry exited with {proc.returncode}; see {storage}/registry.log")
            with contextlib.suppress(OSError):
                if http_get(f"http://{address}/v2/")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"images: docker-registry did not answer on {address} within {timeout:.0f}s")
            time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="images.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dockerd = commands.add_parser("dockerd", help="a private Docker engine under the cache directory")
    dockerd.add_argument("action", choices=["start", "stop", "status"])
    commands.add_parser("base", help=f"import {LOCAL_BASE} (needs DOCKER_HOST or starts a private engine)")
    build_cmd = commands.add_parser("build", help="stage the build context and build one image")
    build_cmd.add_argument("image", choices=sorted(IMAGES))
    build_cmd.add_argument("--pip", default=sys.executable, help="a Python with pip, for pip download")
    test_cmd = commands.add_parser("test", help="run this commit's build of one image and check it")
    test_cmd.add_argument("image", choices=sorted(IMAGES))
    publish_cmd = commands.add_parser("publish", help="push this commit's build of one image to $REGISTRY")
    publish_cmd.add_argument("image", choices=sorted(IMAGES))
    publish_cmd.add_argument(
        "--force", action="store_true", help="publish from a dirty tree, or over a version already published"
    )
    commands.add_parser(
        "distributions", help="JSON: each image built from wheels, its package and the distributions it installs"
    )
    registry_cmd = commands.add_parser("registry", help="Debian's docker-registry on 127.0.0.1 until Ctrl-C")
    registry_cmd.add_argument("--port", type=int, default=5000)
    registry_cmd.add_argument("--storage", type=Path, default=cache_dir() / "registry")
    args = parser.parse_args(argv)

    if args.command == "dockerd":
        engine = Engine()
        if args.action == "start":
            started = engine.start()
            print(f"{'started' if started else 'already running'}: export DOCKER_HOST={engine.host}")
        elif args.action == "stop":
            print("stopped" if engine.stop() else "not running")
        else:
            pid = engine.pid()
            print(f"running, pid {pid}, DOCKER_HOST={engine.host}" if pid and engine.ping() else "not running")
            return 0 if pid else 3
        return 0
    if args.command == "build":
        build(args.image, args.pip)
    elif args.command == "test":
        test(args.image)
    elif args.command == "registry":
        with local_registry(args.storage, args.port) as address:
            print(f"images: registry on {address} (storage {args.storage}); Ctrl-C stops it", flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    elif args.command == "distributions":
        found = {
            image: {"package": spec.package, "distributions": installed_distributions(image)}
            for image, spec in IMAGES.items()
            if spec.wheels
        }
        print(json.dumps(found, indent=2))
    elif args.command == "publish":
        print(f"images: {args.image} published as {publish(args.image, args.force)}")
    else:
        with docker_env() as env:
            print(ensure_base(env))
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
