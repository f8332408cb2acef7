"""The private engine: a fresh start removes the containers an interrupted run left in its state, even those
a restart policy brought back up; an engine already answering is left as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudtolocalllm.devkit.images.engine import Engine, docker

pytestmark = pytest.mark.slow

IMAGE = "ctllm-engine-test/sleep:local"


def _sleep_image(engine: Engine, folder: Path) -> str:
    """An image of the host's ``sleep`` and the libraries it links, imported offline (no registry here)."""
    sleep = shutil.which("sleep")
    assert sleep, "sleep not found (coreutils)"
    ldd = subprocess.run(["ldd", sleep], capture_output=True, text=True, check=True).stdout
    libraries = {word for line in ldd.splitlines() for word in line.split() if word.startswith("/")}
    tarball = folder / "rootfs.tar"
    with tarfile.open(tarball, "w", dereference=True) as rootfs:
        rootfs.add(sleep, arcname="sleep")
        for library in sorted(libraries):
            rootfs.add(library, arcname=library.lstrip("/"))
    docker(engine.env(), "import", str(tarball), IMAGE, capture=True)
    return IMAGE


def _containers(engine: Engine) -> list[str]:
    return docker(engine.env(), "ps", "--all", "--format", "{{.Names}}", capture=True).split()


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A private engine with a state directory of its own, stopped and deleted at the end whatever happens."""
    # A short path of its own (as tmp_path's is not): containerd's sockets under it must fit in a unix socket
    # address (108 bytes).
    state = Path(tempfile.mkdtemp(prefix="ctllm-engine-"))
    engine = Engine(state=state)
    try:
        yield engine
    finally:
        engine.stop()
        assert engine.pid() is None
        assert str(state) not in Path("/proc/self/mounts").read_text()  # no mount left under it
        shutil.rmtree(state)


def test_a_fresh_start_removes_the_containers_an_earlier_run_left(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert engine.start()
    image = _sleep_image(engine, tmp_path)
    name = f"ctllm-leftover-{os.getpid()}"
    # As the deploy tests' containers: a restart policy brings it back whenever the engine starts.
    docker(engine.env(), "run", "--detach", "--restart=always", "--network=none", "--stop-signal=SIGKILL",
           "--name", name, image, "/sleep", "infinity", capture=True)  # fmt: skip
    capsys.readouterr()

    assert not engine.start()  # already answering: nothing is touched
    assert _containers(engine) == [name]

    engine.stop()  # an interrupted run: the container stays in the engine's state
    restarted = datetime.now(UTC)
    assert engine.start()
    assert _containers(engine) == []
    line = f"images: removed 1 container(s) an earlier run left in the private engine: {name}\n"
    assert capsys.readouterr().err == line
    assert docker(engine.env(), "image", "ls", "--quiet", image, capture=True)  # the images stay

    # A container made once the engine answers is never an earlier run's.
    docker(engine.env(), "create", "--network=none", "--name", f"{name}-new", image, "/sleep", "1", capture=True)
    assert engine.remove_leftovers(before=restarted) == []
    assert _containers(engine) == [f"{name}-new"]
