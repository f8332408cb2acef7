"""The devkit is tooling: no package depends on it at run time (only test groups and the root's groups may),
so no image, wheel or .deb of a shipped package can pull it in."""

from __future__ import annotations

import tomllib

from cloudtolocalllm.devkit.images.build import workspace_members
from cloudtolocalllm.devkit.images.specs import IMAGES
from cloudtolocalllm.devkit.repo import ROOT

DEVKIT = "cloudtolocalllm-devkit"


def test_no_package_needs_the_devkit_at_run_time() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    needing = [
        package["name"]
        for package in lock["package"]
        for dependency in package.get("dependencies", [])
        if dependency["name"] == DEVKIT
    ]
    assert needing == []
    in_test_groups = [
        package["name"]
        for package in lock["package"]
        for group in package.get("dev-dependencies", {}).values()
        for dependency in group
        if dependency["name"] == DEVKIT
    ]
    assert "cloudtolocalllm-bridge" in in_test_groups  # the check above reads the lock's real shape


def test_no_image_installs_the_devkit() -> None:
    for image, spec in IMAGES.items():
        assert DEVKIT not in [spec.package, *workspace_members(spec.package)], image
