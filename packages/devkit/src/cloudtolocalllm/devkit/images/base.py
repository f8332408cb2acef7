"""The offline base image: a Debian bookworm root built by mmdebstrap from the Debian mirror (apt over plain
HTTP) and imported once; the tarball is cached so a rebuilt engine imports it again in a second."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

from cloudtolocalllm.devkit.images.engine import cache_dir, docker, image_exists

LOCAL_BASE = "cloudtolocalllm-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")


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
