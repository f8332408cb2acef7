"""The bridge's ``.deb`` installs into a clean Debian bookworm root and its command runs.

The root comes from ``mmdebstrap --variant=apt --include=python3,python3-venv bookworm`` and is cached as a
tarball outside the repository (``${CTLLM_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/cloudtolocalllm}``), so only
the first run downloads it (about 30 s). Each test run unpacks a fresh copy, installs the package with
``dpkg -i`` in a chroot inside private mount and PID namespaces (``unshare``: the /proc mounted there
disappears with the namespace, so nothing stays mounted whatever happens), and removes the copy.
Needs root (chroot, device nodes in the tarball); skipped otherwise.
"""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MIRROR = os.environ.get("CTLLM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
INCLUDE = "python3,python3-venv"
UNIT = "cloudtolocalllm-bridge.service"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installing into a chroot needs root")


def _cache_dir() -> Path:
    if "CTLLM_CACHE_DIR" in os.environ:
        return Path(os.environ["CTLLM_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cloudtolocalllm"


def _bookworm_tarball() -> Path:
    """The cached minimal root; built once under a lock (concurrent runs wait for it)."""
    cache = _cache_dir() / "packaging"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{SUITE}-{INCLUDE.replace(',', '+')}.tar"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            pytest.fail("mmdebstrap is not installed: run `bash scripts/system-deps.sh`")
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(
            [mmdebstrap, "--variant=apt", f"--include={INCLUDE}", "--quiet", SUITE, str(partial), MIRROR],
            stdin=subprocess.DEVNULL,  # without a terminal on stdin, mmdebstrap would read sources from it
            check=True,
            timeout=900,
        )
        partial.rename(tarball)
    return tarball


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


@pytest.fixture(scope="module")
def deb(downloads_dir: Path) -> Path:
    debs = sorted(downloads_dir.glob("cloudtolocalllm-bridge_*_all.deb"))
    assert len(debs) == 1, f"expected one .deb in {downloads_dir}, found {[d.name for d in debs]}"
    return debs[0]


@pytest.fixture(scope="module")
def version(downloads_dir: Path) -> str:
    return str(json.loads((downloads_dir / "index.json").read_text())["version"])


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory, deb: Path) -> Iterator[Path]:
    """A fresh bookworm root with the .deb copied into /tmp; removed afterwards."""
    root = tmp_path_factory.mktemp("bookworm") / "root"
    root.mkdir()
    with tarfile.open(_bookworm_tarball()) as tar:
        # Our own root file system, made by mmdebstrap: owners, modes and device nodes are kept on purpose.
        tar.extractall(root, filter="fully_trusted")  # noqa: S202
    shutil.copy2(deb, root / "tmp" / deb.name)
    try:
        yield root
    finally:
        assert _mounts_under(root) == [], "something is still mounted in the test root"
        shutil.rmtree(root)


def in_chroot(root: Path, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c script`` in ``root`` with a clean environment, /proc private to the namespace."""
    result = subprocess.run(
        [
            "unshare", "--mount", "--pid", "--fork", f"--mount-proc={root / 'proc'}",
            "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
            "chroot", str(root), "/bin/sh", "-ec", script,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        pytest.fail(f"in the chroot, `{script}` exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_package_metadata(deb: Path, version: str) -> None:
    fields = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True).stdout
    assert f"Version: {version}\n" in fields
    assert "Architecture: all\n" in fields
    assert "Depends: python3 (>= 3.11), python3-venv\n" in fields
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    lines = listing.splitlines()
    owners = {line.split()[1] for line in lines}
    assert owners == {"root/root"}
    names = {line.split()[-1] for line in lines}
    assert "./usr/bin/cloudtolocalllm-bridge" in names
    assert f"./usr/lib/systemd/user/{UNIT}" in names
    assert "./usr/share/doc/cloudtolocalllm-bridge/copyright" in names
    wheels = [n for n in names if n.startswith("./usr/share/cloudtolocalllm-bridge/wheels/")]
    assert any("/msgspec-" in w and "cp311" in w and "x86_64" in w for w in wheels)
    assert any("/msgspec-" in w and "cp313" in w and "aarch64" in w for w in wheels)
    # The bridge runs on core's base install: the server stack stays out.
    assert not [w for w in wheels if re.search(r"/(starlette|uvicorn|httptools|cryptography|prometheus)", w)]


def test_installs_runs_and_removes_cleanly(chroot: Path, deb: Path, version: str) -> None:
    installed = in_chroot(chroot, f"dpkg -i /tmp/{deb.name}")
    assert "Setting up cloudtolocalllm-bridge" in installed.stdout

    out = in_chroot(chroot, "cloudtolocalllm-bridge --version").stdout.strip()
    assert out == f"cloudtolocalllm-bridge {version}"
    # `run` imports the whole tunnel stack; with no settings it stops at configuration (status 2, which
    # the unit's RestartPreventExitStatus= names) rather than with an ImportError.
    run = in_chroot(chroot, "cloudtolocalllm-bridge run", check=False)
    assert run.returncode == 2, run.stderr
    assert "CLOUD_URL" in run.stderr and "cloudtolocalllm-bridge login https://" in run.stderr
    in_chroot(chroot, "/opt/cloudtolocalllm-bridge/bin/python3 -c 'import cloudtolocalllm.bridge.runner'")
    site = in_chroot(chroot, "ls /opt/cloudtolocalllm-bridge/lib/python3*/site-packages").stdout
    assert "msgspec" in site and "websockets" in site
    assert "starlette" not in site and "uvicorn" not in site
    assert "pip" not in site.split()  # removed after the install: not needed at run time

    in_chroot(chroot, "dpkg -r cloudtolocalllm-bridge")
    assert not (chroot / "opt" / "cloudtolocalllm-bridge").exists()
    assert not (chroot / "usr" / "bin" / "cloudtolocalllm-bridge").exists()
    assert not (chroot / "usr" / "lib" / "systemd" / "user" / UNIT).exists()


def test_user_unit_is_valid(tmp_path: Path, deb: Path) -> None:
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tree)], check=True)
    unit_text = (tree / "usr" / "lib" / "systemd" / "user" / UNIT).read_text()

    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit_text)
    assert parser.sections() == ["Unit", "Service", "Install"]
    service = parser["Service"]
    assert service["ExecStart"] == "/usr/bin/cloudtolocalllm-bridge run"
    assert service["Restart"] == "on-failure"
    # 2: bad configuration; 3: the sign-in is over. Restarting cannot fix either (docs/bridge.md).
    assert service["RestartPreventExitStatus"].split() == ["2", "3"]
    assert service["EnvironmentFile"] == "-%h/.config/cloudtolocalllm/bridge.env"
    assert service["NoNewPrivileges"] == "yes"
    assert parser["Install"]["WantedBy"] == "default.target"

    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: scripts/system-deps.sh installs it (Debian systemd)"
    # verify checks that ExecStart= exists: point it at the extracted wrapper. A user manager needs a
    # runtime dir. Parse problems are printed (exit status stays 0), so any line naming the unit fails.
    unit = tmp_path / UNIT
    unit.write_text(unit_text.replace("/usr/bin/cloudtolocalllm-bridge", str(tree / "usr/bin/cloudtolocalllm-bridge")))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        [analyze, "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
