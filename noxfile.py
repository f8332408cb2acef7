# /// script
# dependencies = ["nox>=2025.2.9", "cloudtolocalllm-devkit @ ./packages/devkit"]
# ///
"""Sessions for every kind of work, generated per package so a new package needs no edit here.

Each ``tests-<package>`` session gets its own virtualenv holding only that package, the workspace
packages it declares and its own ``test`` dependency group, so an undeclared import fails there.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tomllib
from pathlib import Path

import nox

from cloudtolocalllm.devkit.images.engine import Engine
from cloudtolocalllm.devkit.images.specs import IMAGES, REPOSITORY
from cloudtolocalllm.devkit.images.specs import revision as revision_of_checkout

# The image sessions run the devkit's CLI with nox's own interpreter, which has the devkit (the script block).
IMAGES_CLI = "cloudtolocalllm.devkit.images"

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
    """mypy over every package and the benchmarks (strict for core and the protocol, see pyproject.toml)."""
    _uv_sync(session, "--all-packages", "--all-groups", "--all-extras")
    # Namespace packages: mypy maps each src folder to `cloudtolocalllm.*` only if it is on its path.
    mypy_path = os.pathsep.join(f"packages/{name}/src" for name in PACKAGES)
    sources = [*(f"packages/{name}/src" for name in PACKAGES), "benchmarks"]
    session.run("mypy", *sources, env={"MYPYPATH": mypy_path})


# Packages whose tests include the real small model (ctllm-local-model): it is built (once, cached) first.
NEEDS_LOCAL_MODEL = {"bridge"}


def _ensure_local_model(session: nox.Session) -> None:
    session.run(sys.executable, "-m", "cloudtolocalllm.devkit.local_model", "ensure", external=True)


def _tests(session: nox.Session, folder: str, dist: str) -> None:
    _uv_sync(session, "--package", dist, "--group", "test", "--all-extras")
    if folder in NEEDS_LOCAL_MODEL:
        _ensure_local_model(session)
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
    _ensure_local_model(session)
    session.run(
        "pytest",
        "tests/e2e",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1", "CTLLM_REPO_ROOT": str(ROOT)},
    )


@nox.session(name="docs-screenshots", default=False, requires=["package-bridge"])
def docs_screenshots(session: nox.Session) -> None:
    """Photograph the web app in Chromium into docs/img/web-app/ (the tests alone write to artifacts/)."""
    _uv_sync(session, "--all-packages", "--all-extras", "--group", "e2e")
    _ensure_local_model(session)
    session.run(
        "pytest",
        "tests/e2e/test_web_app_features.py",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1", "CTLLM_REPO_ROOT": str(ROOT), "CTLLM_UPDATE_DOCS_SCREENSHOTS": "1"},
    )


@nox.session(name="tests-local-model", default=True)
def tests_local_model(session: nox.Session) -> None:
    """ctllm-local-model: its logic against fakes, then the real cached build (portable, answers a chat)."""
    _uv_sync(session, "--only-group", "e2e")  # pytest (and pytest-asyncio, which the shared pytest config names)
    _ensure_local_model(session)
    session.run("pytest", "scripts/tests_local_model", *session.posargs, env={"PYTHONDONTWRITEBYTECODE": "1"})


@nox.session(name="tests-repo", default=True)
def tests_repo(session: nox.Session) -> None:
    """The repository's own rules: CI's skip policy (conftest.py) and a nox session for every folder of tests."""
    _uv_sync(session, "--only-group", "e2e")  # pytest, and pytest-asyncio that the shared pytest config names
    session.run(
        "pytest",
        "tests/repo",
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
    session.run("python", "-m", "benchmarks.run", *session.posargs, env={"CTLLM_REPO_ROOT": str(ROOT)})


@nox.session(name="tests-benchmarks", default=True)
def tests_benchmarks(session: nox.Session) -> None:
    """The benchmarks' own parts: the ssh -R peer forwards and is torn down, a tiny comparison reports every key."""
    _uv_sync(session, "--all-packages", "--all-extras", "--group", "bench", "--group", "e2e")
    session.run(
        "pytest",
        "benchmarks/tests",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1", "CTLLM_REPO_ROOT": str(ROOT)},
    )


@nox.session(default=True)
def docs(session: nox.Session) -> None:
    """Build the documentation site with MkDocs in strict mode (broken links fail)."""
    _uv_sync(session, "--only-group", "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


DOWNLOADS_DIR = ROOT / "dist" / "downloads"
STATIC_SITE_DIR = ROOT / "dist" / "static-site"


@nox.session(name="package-bridge", default=False)
def package_bridge(session: nox.Session) -> None:
    """The bridge's downloads into dist/downloads/: its, core's and the protocol's wheels, the .deb, .sha256
    files, index.json."""
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
    """The .deb installed in a clean Debian root; the assembled site served by the real static server; what
    each image installs against what its code imports (which needs every package here, to name the
    distribution behind each import)."""
    _uv_sync(session, "--all-packages", "--all-extras", "--group", "e2e")
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


# --- container images (docker/Dockerfile's targets, docker/certbot/Dockerfile; see docs/deploy/images.md) --------
# One Docker engine per nox run: DOCKER_HOST if the caller set it (never stopped here), else the private engine
# under the cache directory, started by the first session that needs it and stopped when nox exits.


def _stop_engine_on_exit(engine: Engine) -> None:
    atexit.register(engine.stop)
    # SIGTERM (a CI timeout) would skip atexit: turn it into a normal exit so the engine still stops.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _docker_env(session: nox.Session) -> dict[str, str]:
    """DOCKER_HOST for this session's commands, starting the private engine for the rest of the run if needed."""
    if not os.environ.get("DOCKER_HOST"):
        engine = Engine()
        try:
            started = engine.start()
        except SystemExit as exc:
            session.error(str(exc))
        if started:
            session.log(f"started the private Docker engine ({engine.host}); it stops when nox exits")
            _stop_engine_on_exit(engine)
        os.environ["DOCKER_HOST"] = engine.host  # later sessions of this run use it too
    return {"DOCKER_HOST": os.environ["DOCKER_HOST"], "DOCKER_BUILDKIT": "1"}


for _image, _spec in IMAGES.items():

    @nox.session(
        name=f"build-{_image}",
        default=False,
        requires=[_spec.content_session] if _spec.content_session else [],
    )
    def _build_image(session: nox.Session, image: str = _image) -> None:
        env = _docker_env(session)
        # pip download: dependency wheels for the image's Python, whatever the host's
        session.install("pip>=24")
        session.run(sys.executable, "-m", IMAGES_CLI, "build", image, "--pip", "python", env=env, external=True)

    _build_image.__doc__ = (
        f"Build the {_image} image from {_spec.dockerfile(_image)}, tagged with its package version and the commit."
    )

    @nox.session(name=f"test-{_image}", default=False, venv_backend="none", requires=[f"build-{_image}"])
    def _test_image(session: nox.Session, image: str = _image) -> None:
        session.run(sys.executable, "-m", IMAGES_CLI, "test", image, external=True, env=_docker_env(session))

    _test_image.__doc__ = (
        f"Run the {_image} image read-only as non-root on 127.0.0.1: healthy, /health, a real request."
    )

    @nox.session(name=f"publish-{_image}", default=False, venv_backend="none", requires=[f"test-{_image}"])
    def _publish_image(session: nox.Session, image: str = _image) -> None:
        # posargs: --force publishes from a dirty tree or over a version the registry already has.
        session.run(
            sys.executable,
            "-m",
            IMAGES_CLI,
            "publish",
            image,
            *session.posargs,
            external=True,
            env=_docker_env(session),
        )

    _publish_image.__doc__ = (
        f"Build, test and push {_image} to $REGISTRY as <version> and <commit>; refuses a dirty tree or a "
        "published version unless -- --force."
    )


def _image_suite(session: nox.Session, folder: str, *groups: str) -> None:
    """pytest over a folder of tests that run this commit's images on the run's Docker engine."""
    tests = ROOT / folder
    if not any(tests.glob("**/test_*.py")):
        session.log(f"{folder}/ has no tests yet: nothing to run")
        return
    _uv_sync(session, "--all-packages", "--all-extras", *(arg for group in groups for arg in ("--group", group)))
    revision = revision_of_checkout()
    # The images under test, by this commit's tag, e.g. CTLLM_IMAGE_API_BACKEND=cloudtolocalllm/api-backend:<sha>.
    image_env = {
        f"CTLLM_IMAGE_{image.upper().replace('-', '_')}": f"{REPOSITORY}/{image}:{revision}" for image in IMAGES
    }
    session.run(
        "pytest",
        folder,
        *session.posargs,
        env={
            **_docker_env(session),
            **image_env,
            "CTLLM_IMAGE_REVISION": revision,
            "PYTHONDONTWRITEBYTECODE": "1",
            "CTLLM_REPO_ROOT": str(ROOT),
        },
    )


@nox.session(name="tests-deploy", default=True, requires=[f"build-{image}" for image in IMAGES])
def tests_deploy(session: nox.Session) -> None:
    """Compose and deploy scripts against this commit's images (tests/deploy)."""
    _image_suite(session, "tests/deploy", "e2e")


@nox.session(name="tests-orchestration", default=True, requires=[f"build-{image}" for image in IMAGES])
def tests_orchestration(session: nox.Session) -> None:
    """Swarm and Kubernetes manifests against this commit's images (tests/orchestration)."""
    _image_suite(session, "tests/orchestration", "e2e", "orchestration")


@nox.session(name="tests-images", default=True, requires=[f"test-{image}" for image in IMAGES])
def tests_images(session: nox.Session) -> None:
    """Every image built and tested, published to a real registry on 127.0.0.1, pulled back by digest; release."""
    _uv_sync(session, "--only-group", "e2e")  # pytest (and pytest-asyncio, which the shared pytest config names)
    session.run(
        "pytest",
        "scripts/tests_images",
        *session.posargs,
        env={**_docker_env(session), "PYTHONDONTWRITEBYTECODE": "1", "CTLLM_REPO_ROOT": str(ROOT)},
    )
