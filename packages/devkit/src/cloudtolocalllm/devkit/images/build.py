"""Build one image: stage its context (the lock file's export, dependency and workspace wheels, content,
files) under build/images/<image>/ and run docker build on the engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from cloudtolocalllm.devkit.images.base import ensure_base
from cloudtolocalllm.devkit.images.engine import docker, docker_env
from cloudtolocalllm.devkit.images.specs import IMAGES, PYTHON_VERSIONS, git, package_version, revision, tags
from cloudtolocalllm.devkit.repo import ROOT


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
        workspace = [line.split()[-1] for line in workspace_members(spec.package)]
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


def workspace_members(dist: str) -> list[str]:
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


def build(image: str, pip: str) -> list[str]:
    context = stage_context(image, pip)
    spec = IMAGES[image]
    source = os.environ.get("IMAGE_SOURCE") or git("remote", "get-url", "origin")
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
