"""Publish one image to ``$REGISTRY`` (a tree with changes and a version already published are refused),
and Debian's docker-registry on loopback to publish to in tests."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from cloudtolocalllm.devkit.images.engine import docker, docker_env, image_exists
from cloudtolocalllm.devkit.images.net import free_port, http_get
from cloudtolocalllm.devkit.images.specs import tags
from cloudtolocalllm.devkit.images.test import expect
from cloudtolocalllm.devkit.launch import Proc
from cloudtolocalllm.devkit.repo import ROOT

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
            expect(
                f"{registry}/{repository}@{digest}" in repo_digests,
                f"the registry serves {digest} for {remote}, the engine recorded {repo_digests}",
            )
            print(f"images: pushed {remote} {digest}")
            digests.add(digest)
        expect(len(digests) == 1, f"one image pushed under two digests: {digests}")
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
    proc = Proc("registry", [binary, "serve", str(config)], {}, storage)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise SystemExit(f"images: docker-registry exited with {proc.popen.returncode}; see {proc.log_path}")
            with contextlib.suppress(OSError):
                if http_get(f"http://{address}/v2/")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"images: docker-registry did not answer on {address} within {timeout:.0f}s")
            time.sleep(0.1)
        yield address
    finally:
        proc.stop(timeout=10)
