"""OpenSSH's reverse tunnel as a peer to measure the tunnel against: ``ssh -R`` through a private sshd on loopback.

Everything lives in one temporary folder: the sshd's host key and config, the client's key, the
authorized_keys and known_hosts files, both logs. The system's sshd and the user's ``~/.ssh`` are never read
or touched. sshd listens on a free loopback port (retried if another process takes it first); the forwarded
port is the one sshd binds itself for ``-R 0:...`` and the client prints.

    with ssh_reverse_tunnel(backend_port, folder) as tunnel:
        ...  # connect to 127.0.0.1:tunnel.port to reach the backend through ssh
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10
BIND_ATTEMPTS = 5
# Where Debian's sshd drops privileges before authentication when it runs as root; /run is emptied at boot,
# and only the distro's service creates it again.
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class SshReverseTunnel:
    """A running ``ssh -R``: connections to ``127.0.0.1:port`` reach the backend through sshd and ssh."""

    port: int
    sshd: subprocess.Popen[bytes]
    ssh: subprocess.Popen[bytes]
    version: str

    def pids(self) -> list[int]:
        """The client, sshd's listener and every process sshd started for the connection (CPU is read here)."""
        return [self.ssh.pid, self.sshd.pid, *descendants(self.sshd.pid)]


def find_binary(name: str) -> str:
    """``name`` on PATH or in /usr/sbin (not on a normal user's PATH); sshd must be run by its absolute path."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: install openssh-server and openssh-client (scripts/system-deps.sh)")
    return os.path.abspath(found)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, read from /proc (sshd's per-connection processes start sessions of
    their own, so its process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state != "Z":
            children.setdefault(int(parent), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie waiting for its parent counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def ssh_reverse_tunnel(backend_port: int, folder: Path) -> Iterator[SshReverseTunnel]:
    """sshd on loopback and ``ssh -R`` to ``127.0.0.1:backend_port`` through it; both stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    sshd_bin, ssh_bin = find_binary("sshd"), find_binary("ssh")
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755)
    host_key, client_key = folder / "host_key", folder / "client_key"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)], check=True)
    (folder / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    sshd, sshd_port = _start_sshd(sshd_bin, folder)
    ssh: subprocess.Popen[bytes] | None = None
    try:
        host_type, host_blob = Path(f"{host_key}.pub").read_text().split()[:2]
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{sshd_port} {host_type} {host_blob}\n")
        ssh, port = _start_ssh(ssh_bin, folder, client_key, known_hosts, sshd_port, backend_port)
        version = subprocess.run([ssh_bin, "-V"], capture_output=True, text=True).stderr.strip()
        yield SshReverseTunnel(port=port, sshd=sshd, ssh=ssh, version=version)
    finally:
        _stop(ssh, sshd)


def _start_sshd(sshd_bin: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    user = pwd.getpwuid(os.getuid()).pw_name
    last_log = ""
    for attempt in range(BIND_ATTEMPTS):
        port = _free_port()
        config = folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{port}",
                    f"HostKey {folder / 'host_key'}",
                    f"PidFile {folder / 'sshd.pid'}",  # never the system sshd's pid file
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    f"AllowUsers {user}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # The temporary folder sits under a world-writable /tmp, which StrictModes refuses.
                    "StrictModes no",
                    "AllowTcpForwarding remote",
                    "PermitOpen none",
                    "GatewayPorts no",  # forwarded ports listen on loopback only
                    "X11Forwarding no",
                    "AllowAgentForwarding no",
                    "PermitTTY no",
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        log = folder / f"sshd-{attempt}.log"
        with log.open("wb") as out:
            sshd = subprocess.Popen(
                [sshd_bin, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

        def listening(sshd: subprocess.Popen[bytes] = sshd, log: Path = log) -> bool:
            return sshd.poll() is not None or "Server listening on" in log.read_text(errors="replace")

        _wait(listening, "sshd to listen")
        if sshd.poll() is None:
            return sshd, port
        last_log = log.read_text(errors="replace")
        if "Address already in use" not in last_log:
            break  # not a race for the port: retrying would fail the same way
    raise RuntimeError(f"sshd did not start: {last_log[-2000:]}")


def _start_ssh(
    ssh_bin: str, folder: Path, client_key: Path, known_hosts: Path, sshd_port: int, backend_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    log = folder / "ssh.log"
    argv = [
        ssh_bin,
        "-F",
        "none",  # no user or system client config: OpenSSH's defaults, as a user's first `ssh -R` gets
        "-N",
        "-T",
        "-i",
        str(client_key),
        "-p",
        str(sshd_port),
        "-l",
        pwd.getpwuid(os.getuid()).pw_name,
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        f"0:127.0.0.1:{backend_port}",  # port 0: sshd binds a free one and the client prints it
        "127.0.0.1",
    ]
    with log.open("wb") as out:
        ssh = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    allocated = re.compile(r"Allocated port (\d+) for remote forward")

    def forwarded() -> bool:
        return ssh.poll() is not None or allocated.search(log.read_text(errors="replace")) is not None

    try:
        _wait(forwarded, "ssh to set up the remote forward")
        match = allocated.search(log.read_text(errors="replace"))
        if ssh.poll() is not None or match is None:
            raise RuntimeError(f"ssh -R failed: {log.read_text(errors='replace')[-2000:]}")
    except BaseException:
        _terminate(ssh)
        raise
    return ssh, int(match.group(1))


def _stop(ssh: subprocess.Popen[bytes] | None, sshd: subprocess.Popen[bytes]) -> None:
    """The client first: its connection's sshd processes then end by themselves and the listener reaps them
    (killed first, the listener would leave them to init). Whatever is still running after that is ended by
    its pid."""
    connection = descendants(sshd.pid)
    if ssh is not None:
        _terminate(ssh)
    with contextlib.suppress(RuntimeError):
        _wait(lambda: not any(alive(pid) for pid in connection), "sshd's connection processes to exit", STOP_TIMEOUT_S)
    for pid in connection + descendants(sshd.pid):
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _terminate(sshd)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _wait(predicate: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
