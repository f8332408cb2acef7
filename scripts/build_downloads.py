#!/usr/bin/env python3
"""Build the bridge's downloads: its wheel, core's wheel and a ``.deb``, each with a ``.sha256``, plus a listing.

    python3 scripts/build_downloads.py --out dist/downloads [--pip PYTHON]

The ``.deb`` (``Architecture: all``) installs:

- ``/usr/share/cloudtolocalllm-bridge/wheels/``: the workspace's three wheels (bridge, core, protocol) and
  every third-party wheel the bridge needs, pinned and hash-checked from ``uv.lock``, for CPython 3.11-3.14
  on x86_64 and aarch64 (msgspec and websockets are compiled per Python version);
- ``/opt/cloudtolocalllm-bridge``: a virtualenv that ``postinst`` builds offline from those wheels with the
  system's ``python3`` (so the package fits whatever Python 3.11+ the distribution has);
- ``/usr/bin/cloudtolocalllm-bridge``: a small wrapper that runs the venv's command;
- ``/usr/lib/systemd/user/cloudtolocalllm-bridge.service``: the systemd user unit.

Wheels are downloaded with pip (``--pip``: a Python that has pip; the nox session passes its own venv's).
Stdlib only. File times are clamped to ``SOURCE_DATE_EPOCH`` (default: the last commit's time) so two builds
of one commit give the same ``.deb``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging" / "bridge-deb"
BRIDGE_DIST = "cloudtolocalllm-bridge"
CORE_DIST = "cloudtolocalllm-core"
PROTOCOL_DIST = "cloudtolocalllm-protocol"
OWN_DISTS = (BRIDGE_DIST, CORE_DIST, PROTOCOL_DIST)
VERSION_FILE = ROOT / "packages" / "bridge" / "src" / "cloudtolocalllm" / "bridge" / "version.py"

PYTHONS = ("3.11", "3.12", "3.13", "3.14")
ARCHES = ("x86_64", "aarch64")
# Every manylinux tag pip may pick for a target; the oldest glibc here (2.17) is what Debian and Ubuntu exceed.
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_28")

DEB_NAME = "cloudtolocalllm-bridge"
MAINTAINER = "CloudToLocalLLM <maintainers@cloudtolocalllm.online>"
HOMEPAGE = "https://cloudtolocalllm.online/"


def bridge_version() -> str:
    match = re.search(r'__version__\s*=\s*"([^"]+)"', VERSION_FILE.read_text())
    if match is None:
        raise SystemExit(f"no __version__ in {VERSION_FILE.relative_to(ROOT)}")
    return match.group(1)


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=False
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_wheels(dest: Path) -> list[Path]:
    """The bridge's, core's and the protocol's wheels, built from the workspace by uv."""
    for dist in OWN_DISTS:
        subprocess.run(
            ["uv", "build", "--package", dist, "--wheel", "--out-dir", str(dest), "--quiet"], cwd=ROOT, check=True
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(OWN_DISTS):
        raise SystemExit(f"expected {len(OWN_DISTS)} wheels, found {[w.name for w in wheels]}")
    return wheels


def download_dependencies(pip_python: str, dest: Path, work: Path) -> list[Path]:
    """Third-party wheels pinned by uv.lock (hashes checked), for every supported Python and architecture."""
    requirements = work / "requirements.txt"
    subprocess.run(
        [
            "uv", "export", "--frozen", "--package", BRIDGE_DIST, "--no-dev", "--no-emit-workspace",
            "--format", "requirements-txt", "--output-file", str(requirements), "--quiet",
        ],
        cwd=ROOT,
        check=True,
    )  # fmt: skip
    if re.search(r"(?m)^(starlette|uvicorn)==", requirements.read_text()):
        raise SystemExit("the bridge must not depend on the server stack (starlette/uvicorn): check core's extras")
    for python in PYTHONS:
        for arch in ARCHES:
            platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{arch}")]
            subprocess.run(
                [
                    pip_python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--no-deps", "--require-hashes", "-r", str(requirements),
                    "--dest", str(dest), "--python-version", python, "--implementation", "cp", *platforms,
                ],
                check=True,
            )  # fmt: skip
    return sorted(dest.glob("*.whl"))


def _render(template: Path, version: str) -> str:
    return template.read_text().replace("@VERSION@", version)


def _put(root: Path, relative: str, content: bytes, mode: int) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)


def build_deb(version: str, wheels: list[Path], out: Path, work: Path, epoch: int) -> Path:
    """Lay out the package tree and build it with ``dpkg-deb --root-owner-group``."""
    tree = work / "deb"
    shutil.rmtree(tree, ignore_errors=True)
    doc = f"usr/share/doc/{DEB_NAME}"
    for wheel in wheels:
        _put(tree, f"usr/share/{DEB_NAME}/wheels/{wheel.name}", wheel.read_bytes(), 0o644)
    _put(tree, f"usr/bin/{DEB_NAME}", (PACKAGING / "wrapper.sh").read_bytes(), 0o755)
    _put(
        tree,
        f"usr/lib/systemd/user/{DEB_NAME}.service",
        (PACKAGING / f"{DEB_NAME}.service").read_bytes(),
        0o644,
    )
    _put(tree, f"{doc}/examples/bridge.env", (PACKAGING / "bridge.env").read_bytes(), 0o644)
    _put(tree, f"{doc}/README", (PACKAGING / "README").read_bytes(), 0o644)
    _put(tree, f"{doc}/copyright", (PACKAGING / "copyright").read_bytes(), 0o644)
    changelog = (ROOT / "packages" / "bridge" / "CHANGELOG.md").read_bytes()
    _put(tree, f"{doc}/changelog.gz", gzip.compress(changelog, compresslevel=9, mtime=epoch), 0o644)
    for script in ("postinst", "postrm"):
        _put(tree, f"DEBIAN/{script}", _render(PACKAGING / script, version).encode(), 0o755)

    installed_kib = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) // 1024 + 1
    control = "\n".join(
        [
            f"Package: {DEB_NAME}",
            f"Version: {version}",
            "Architecture: all",
            f"Maintainer: {MAINTAINER}",
            f"Installed-Size: {installed_kib}",
            "Depends: python3 (>= 3.11), python3-venv",
            "Section: net",
            "Priority: optional",
            f"Homepage: {HOMEPAGE}",
            "Description: CloudToLocalLLM bridge: reach your local LLM from anywhere",
            " Runs next to your local LLM server (Ollama, llama.cpp server, LM Studio, vLLM) and connects it",
            " to the CloudToLocalLLM cloud over one outbound WebSocket: no port is opened on your router.",
            " .",
            " Installs the cloudtolocalllm-bridge command (in a private virtualenv under",
            " /opt/cloudtolocalllm-bridge, built offline from the wheels in this package) and a systemd user",
            " unit: systemctl --user enable --now cloudtolocalllm-bridge",
            "",
        ]
    )
    _put(tree, "DEBIAN/control", control.encode(), 0o644)

    for path in [tree, *tree.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    deb = out / f"{DEB_NAME}_{version}_all.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(deb)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return deb


def write_checksums_and_listing(out: Path, version: str, artifacts: list[Path]) -> Path:
    """``<file>.sha256`` next to every artifact (``sha256sum -c`` format), SHA256SUMS, and ``index.json``."""
    entries = []
    for artifact in artifacts:
        digest = sha256_of(artifact)
        (out / f"{artifact.name}.sha256").write_text(f"{digest}  {artifact.name}\n")
        kind = "deb" if artifact.suffix == ".deb" else "wheel"
        entries.append({"name": artifact.name, "kind": kind, "size": artifact.stat().st_size, "sha256": digest})
    (out / "SHA256SUMS").write_text("".join(f"{e['sha256']}  {e['name']}\n" for e in entries))
    listing = out / "index.json"
    listing.write_text(json.dumps({"product": DEB_NAME, "version": version, "files": entries}, indent=2) + "\n")
    return listing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "downloads", help="output folder (emptied)")
    parser.add_argument("--pip", default=sys.executable, help="a Python interpreter that has pip")
    args = parser.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("dpkg-deb not found (Debian package dpkg)")
    version = bridge_version()
    epoch = source_date_epoch()
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="ctllm-downloads-") as tmp:
        work = Path(tmp)
        own = build_wheels(work / "own")
        third_party = download_dependencies(args.pip, work / "wheelhouse", work)
        deb = build_deb(version, own + third_party, out, work, epoch)
        published = []
        for wheel in own:
            shutil.copy2(wheel, out / wheel.name)
            published.append(out / wheel.name)
    write_checksums_and_listing(out, version, [deb, *published])
    size_kib = deb.stat().st_size / 1024
    print(f"built {deb.name} ({size_kib:.0f} KiB, {len(third_party)} third-party wheels) and {len(own)} wheels")
    print(f"into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
