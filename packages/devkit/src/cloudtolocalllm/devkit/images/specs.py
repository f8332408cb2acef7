"""The images: what goes into each one, which Dockerfile target builds it, and the tags it gets."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from cloudtolocalllm.devkit.repo import ROOT

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


def git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def revision() -> str:
    """The commit, marked dirty when tracked files differ from it (such an image is not that commit)."""
    sha = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return f"{sha}-dirty" if git("status", "--porcelain", "--untracked-files=no") else sha


def package_version(dist: str) -> str:
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        text = pyproject.read_text()
        if f'name = "{dist}"' in text:
            for version_file in (pyproject.parent / "src").rglob("version.py"):
                for line in version_file.read_text().splitlines():
                    if line.startswith("__version__"):
                        return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit(f"images: no version found for {dist}")


def tags(image: str) -> list[str]:
    spec = IMAGES[image]
    return [f"{REPOSITORY}/{image}:{package_version(spec.package)}", f"{REPOSITORY}/{image}:{revision()}"]
