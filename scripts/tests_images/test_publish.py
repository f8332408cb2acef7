"""publish-<image>: every image of this commit pushed to a real registry, pulled back into a fresh engine with
the same digest; the refusals (no REGISTRY, a dirty tree, a version already published) for real."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudtolocalllm.devkit.images.engine import Engine, docker
from cloudtolocalllm.devkit.images.publish import published_digest
from cloudtolocalllm.devkit.images.specs import IMAGES, tags

PUSHED = re.compile(r"^images: pushed (?P<ref>\S+) (?P<digest>sha256:[0-9a-f]{64})$", re.MULTILINE)
Publish = Callable[..., tuple[int, str]]


@pytest.fixture
def publish(sh: Callable[..., Any]) -> Publish:
    """``publish(cwd, env, *args, image=...)``: ctllm-images publish, its exit code and output."""

    def call(cwd: Path, env: dict[str, str], *extra: str, image: str = "api-backend") -> tuple[int, str]:
        result = sh([sys.executable, "-m", "cloudtolocalllm.devkit.images", "publish", image, *extra], cwd, env)
        return result.returncode, result.stdout + result.stderr

    return call


def test_publish_needs_registry(publish: Publish, repo_root: Path, docker_env: dict[str, str]) -> None:
    code, output = publish(repo_root, {**docker_env, "REGISTRY": ""})
    assert code != 0
    assert "set REGISTRY" in output


@pytest.mark.parametrize("value", ["http://127.0.0.1:5000", "127.0.0.1:5000/team", ":5000"])
def test_publish_rejects_a_registry_that_is_not_host_port(
    publish: Publish, repo_root: Path, docker_env: dict[str, str], value: str
) -> None:
    code, output = publish(repo_root, {**docker_env, "REGISTRY": value})
    assert code != 0
    assert "is not host[:port]" in output


@pytest.mark.parametrize("change", ["modified", "untracked"])
def test_publish_refuses_a_dirty_tree(
    publish: Publish, sh: Callable[..., Any], clone: Path, docker_env: dict[str, str], registry: str, change: str
) -> None:
    if change == "modified":
        with (clone / "README.md").open("a") as readme:
            readme.write("\nlocal edit\n")
    else:
        (clone / "notes.txt").write_text("not committed\n")
    code, output = publish(clone, {**docker_env, "REGISTRY": registry})
    assert code != 0
    assert "uncommitted changes" in output
    assert sh(["git", "status", "--porcelain"], clone, {}).stdout.strip()  # refused, the tree left as it was


def test_every_image_published_and_pulled_back(
    publish: Publish,
    sh: Callable[..., Any],
    repo_root: Path,
    docker_env: dict[str, str],
    registry: str,
    untag_later: list[str],
) -> None:
    dirty = sh(["git", "status", "--porcelain"], repo_root, {}).stdout
    assert not dirty, f"publishing needs a clean tree (as in CI's fresh clone); uncommitted here:\n{dirty}"
    env = {**docker_env, "REGISTRY": registry}
    pushed: dict[str, str] = {}
    local_ids: dict[str, str] = {}
    for image in IMAGES:
        code, output = publish(repo_root, env, image=image)
        refs = {m["ref"]: m["digest"] for m in PUSHED.finditer(output)}
        untag_later.extend(refs)  # the registry-named tags publish made on the shared engine
        assert code == 0, output
        assert set(refs) == {f"{registry}/{tag}" for tag in tags(image)}, output
        assert len(set(refs.values())) == 1, f"{image}: one image, two digests: {refs}"
        pushed.update(refs)
        local_ids[image] = docker(docker_env, "image", "inspect", "-f", "{{.Id}}", tags(image)[1],
                                         capture=True)  # fmt: skip
        for ref, digest in refs.items():  # what the registry serves under each tag is what was pushed
            repository, tag = ref.removeprefix(f"{registry}/").rsplit(":", 1)
            assert published_digest(registry, repository, tag) == digest

    # The version tag is taken now: publishing again is refused, unless forced (which pushes the same image).
    code, output = publish(repo_root, env)
    assert code != 0
    assert "already published" in output
    code, output = publish(repo_root, env, "--force")
    assert code == 0, output
    forced = {m["ref"]: m["digest"] for m in PUSHED.finditer(output)}
    assert forced
    assert forced.items() <= pushed.items()

    # Pull every reference into an empty engine of its own, so every layer comes from the registry.
    # A short path of its own: containerd's sockets under it must fit in a unix socket address (108 bytes).
    state = Path(tempfile.mkdtemp(prefix="ctllm-pull-"))
    engine = Engine(state)
    assert engine.start()
    daemon = engine.pid()
    try:
        for ref, digest in pushed.items():
            docker(engine.env(), "pull", "--quiet", ref, capture=True)
            info = json.loads(docker(engine.env(), "image", "inspect", ref, capture=True))[0]
            repository = ref.rsplit(":", 1)[0]
            assert f"{repository}@{digest}" in info["RepoDigests"], (ref, info["RepoDigests"])
            assert info["Id"] == local_ids[repository.rsplit("/", 1)[1]], f"{ref} pulled back as another image"
        # What came back runs: certbot's image, read-only, as its non-root user (host network, as tests run).
        certbot = next(ref for ref in pushed if "/cloudtolocalllm/certbot:" in ref)
        uid = docker(engine.env(), "run", "--rm", "--read-only", "--network=host", "--entrypoint=id", certbot,
                            "-u", capture=True)  # fmt: skip
        assert uid == "65532"
    finally:
        engine.stop()
    # Stopped means gone: no daemon, and no mount left under its state (dockerd's host netns bind mount).
    assert not Path(f"/proc/{daemon}").exists()
    assert str(state) not in Path("/proc/self/mounts").read_text()
    shutil.rmtree(state)
