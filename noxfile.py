"""Sessions for every kind of work, generated per package so a new package needs no edit here.

Each ``tests-<package>`` session gets its own virtualenv holding only that package, the workspace
packages it declares and its own ``test`` dependency group, so an undeclared import fails there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.error_on_external_run = True

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"


def _packages() -> dict[str, str]:
    """Map each package folder name to its distribution name."""
    found: dict[str, str] = {}
    for pyproject in sorted(PACKAGES_DIR.glob("*/pyproject.toml")):
        meta = tomllib.loads(pyproject.read_text())
        found[pyproject.parent.name] = meta["project"]["name"]
    return found


PACKAGES = _packages()


def _uv_sync(session: nox.Session, *args: str) -> None:
    """Install exactly what the lock file says into the session's own virtualenv."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--no-default-groups",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


@nox.session(default=True)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    _uv_sync(session, "--only-group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(default=True)
def typecheck(session: nox.Session) -> None:
    """mypy over every package (strict for core, see pyproject.toml)."""
    _uv_sync(session, "--all-packages", "--all-groups", "--all-extras")
    # Namespace packages: mypy maps each src folder to `cloudtolocalllm.*` only if it is on its path.
    mypy_path = os.pathsep.join(f"packages/{name}/src" for name in PACKAGES)
    session.run("mypy", *(f"packages/{name}/src" for name in PACKAGES), env={"MYPYPATH": mypy_path})


def _tests(session: nox.Session, folder: str, dist: str) -> None:
    _uv_sync(session, "--package", dist, "--group", "test", "--all-extras")
    session.run(
        "pytest",
        f"packages/{folder}/tests",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1", "CTLLM_REPO_ROOT": str(ROOT)},
    )


def _dist(session: nox.Session, dist: str) -> None:
    out = ROOT / "dist" / dist
    session.run("uv", "build", "--package", dist, "--out-dir", str(out), external=True)
    built = sorted(p.name for p in out.iterdir())
    if not any(name.endswith(".whl") for name in built) or not any(name.endswith(".tar.gz") for name in built):
        session.error(f"{dist}: expected a wheel and an sdist in {out}, found {built}")
    session.log(f"built {', '.join(built)}")


for _folder, _dist_name in PACKAGES.items():
    _slug = _folder.replace("_", "-")

    @nox.session(name=f"tests-{_slug}", default=True)
    def _tests_session(session: nox.Session, folder: str = _folder, dist: str = _dist_name) -> None:
        _tests(session, folder, dist)

    _tests_session.__doc__ = f"pytest for {_dist_name} in an environment holding only what it declares."

    @nox.session(name=f"dist-{_slug}", default=False, venv_backend="none")
    def _dist_session(session: nox.Session, dist: str = _dist_name) -> None:
        _dist(session, dist)

    _dist_session.__doc__ = f"Build the wheel and sdist of {_dist_name} into dist/."


@nox.session(name="tests-e2e", default=True, requires=["package-bridge"])
def tests_e2e(session: nox.Session) -> None:
    """Every service and the bridge as real processes, a real small model, the official clients."""
    # docs: the dev-stack test builds the documentation site it serves.
    _uv_sync(session, "--all-packages", "--all-extras", "--group", "e2e", "--group", "docs")
    session.run("python3", "scripts/local_model.py", "ensure", external=True)
    session.run(
        "pytest",
        "tests/e2e",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1", "CTLLM_REPO_ROOT": str(ROOT)},
    )


@nox.session(name="build-flutter-app-content", default=False, venv_backend="none")
def build_flutter_app_content(session: nox.Session) -> None:
    """Build the chat web app (apps/chat) into dist/flutter-app: hashed assets, .gz, first-load budget."""
    session.run("python3", "scripts/build_chat_app.py", str(ROOT / "dist" / "flutter-app"), external=True)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Measure and report (``-- --json PATH`` to save); never fails on a timing."""
    _uv_sync(session, "--all-packages", "--all-groups", "--all-extras")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"CTLLM_REPO_ROOT": str(ROOT)})


@nox.session(default=True)
def docs(session: nox.Session) -> None:
    """Build the documentation site with MkDocs in strict mode (broken links fail)."""
    _uv_sync(session, "--only-group", "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


DOWNLOADS_DIR = ROOT / "dist" / "downloads"
STATIC_SITE_DIR = ROOT / "dist" / "static-site"


@nox.session(name="package-bridge", default=False)
def package_bridge(session: nox.Session) -> None:
    """The bridge's downloads into dist/downloads/: its wheel, core's wheel, the .deb, .sha256 files, index.json."""
    session.install("pip>=24")  # pip download: the wheelhouse for every supported Python and CPU
    session.run("python", "scripts/build_downloads.py", "--out", str(DOWNLOADS_DIR), "--pip", "python")


@nox.session(name="build-static-site-content", default=False, requires=["package-bridge"])
def build_static_site_content(session: nox.Session) -> None:
    """The static-site container's content in dist/static-site/: homepage, docs under /docs/, downloads."""
    _uv_sync(session, "--only-group", "docs")
    docs_out = Path(session.create_tmp()).resolve() / "docs-site"  # MkDocs resolves it from the config's folder
    session.run(
        "mkdocs", "build", "--strict", "--quiet", "-f", "packaging/mkdocs-site.yml", "--site-dir", str(docs_out)
    )
    session.run(
        "python",
        "scripts/build_static_site.py",
        "--docs",
        str(docs_out),
        "--downloads",
        str(DOWNLOADS_DIR),
        "--out",
        str(STATIC_SITE_DIR),
    )


@nox.session(name="tests-packaging", default=True, requires=["build-static-site-content"])
def tests_packaging(session: nox.Session) -> None:
    """The .deb installed in a clean Debian root; the assembled site served by the real static server."""
    _uv_sync(session, "--package", PACKAGES["static_site"], "--group", "test")
    session.run(
        "pytest",
        "tests/packaging",
        *session.posargs,
        env={
            "PYTHONDONTWRITEBYTECODE": "1",
            "CTLLM_REPO_ROOT": str(ROOT),
            "CTLLM_DOWNLOADS_DIR": str(DOWNLOADS_DIR),
            "CTLLM_SITE_DIR": str(STATIC_SITE_DIR),
        },
    )


# --- container images (docker/python-service/Dockerfile, docker/<image>/Dockerfile; see docs/deploy/images.md) --
# Not in the default run yet: they need a Docker engine (scripts/system-deps.sh --images installs it), and
# start a private one themselves unless DOCKER_HOST is set.


def _load_images_module() -> Any:
    spec = importlib.util.spec_from_file_location("cloudtolocalllm_images", ROOT / "scripts" / "images.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


IMAGES = _load_images_module().IMAGES

for _image, _spec in IMAGES.items():

    @nox.session(
        name=f"build-{_image}",
        default=False,
        requires=[_spec.content_session] if _spec.content_session else [],
    )
    def _build_image(session: nox.Session, image: str = _image) -> None:
        session.install("pip>=24")  # pip download: dependency wheels for the image's Python, whatever the host's
        session.run("python", "scripts/images.py", "build", image, "--pip", "python")

    _build_image.__doc__ = (
        f"Build the {_image} image from {_spec.dockerfile(_image)}, tagged with its package version and the commit."
    )

    @nox.session(name=f"test-{_image}", default=False, venv_backend="none", requires=[f"build-{_image}"])
    def _test_image(session: nox.Session, image: str = _image) -> None:
        session.run("python3", "scripts/images.py", "test", image, external=True)

    _test_image.__doc__ = (
        f"Run the {_image} image read-only as non-root on 127.0.0.1: healthy, /health, a real request."
    )
