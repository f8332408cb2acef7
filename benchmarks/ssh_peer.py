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
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudtolocalllm.devkit.launch import Proc, alive, descendants, wait_for

START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10
BIND_ATTEMPTS = 5
POLL_S = 0.02
# Where Debian's sshd drops privileges before authentication when it runs as root; /run is emptied at boot,
# and only the distro's service creates it again.
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class SshReverseTunnel:
    """A running ``ssh -R``: connections to ``127.0.0.1:port`` reach the backend through sshd and ssh."""

    port: int
    sshd: Proc
    ssh: Proc
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
    ssh: Proc | None = None
    try:
        host_type, host_blob = Path(f"{host_key}.pub").read_text().split()[:2]
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{sshd_port} {host_type} {host_blob}\n")
        ssh, port = _start_ssh(ssh_bin, folder, client_key, known_hosts, sshd_port, backend_port)
        version = subprocess.run([ssh_bin, "-V"], capture_output=True, text=True).stderr.strip()
        yield SshReverseTunnel(port=port, sshd=sshd, ssh=ssh, version=version)
    finally:
        _stop(ssh, sshd)


def _start_sshd(sshd_bin: str, folder: Path) -> tuple[Proc, int]:
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
        # Its own session: Ctrl-C reaches the benchmark only, which stops the client before sshd (see _stop).
        sshd = Proc(f"sshd-{attempt}", [sshd_bin, "-D", "-e", "-f", str(config)], {}, folder, own_session=True)

        def listening(sshd: Proc = sshd) -> bool:
            return not sshd.alive() or "Server listening on" in sshd.log_text()

        wait_for(listening, START_TIMEOUT_S, "sshd to listen", interval=POLL_S)
        if sshd.alive():
            return sshd, port
        last_log = sshd.log_text()
        if "Address already in use" not in last_log:
            break  # not a race for the port: retrying would fail the same way
    raise RuntimeError(f"sshd did not start: {last_log[-2000:]}")


def _start_ssh(
    ssh_bin: str, folder: Path, client_key: Path, known_hosts: Path, sshd_port: int, backend_port: int
) -> tuple[Proc, int]:
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
    ssh = Proc("ssh", argv, {}, folder)
    try:
        # sshd binds the forwarded port itself (-R 0:...) and the client prints which one.
        allocated = ssh.wait_for_output(r"Allocated port (\d+) for remote forward", START_TIMEOUT_S)
    except BaseException:
        ssh.stop(timeout=STOP_TIMEOUT_S)
        raise
    return ssh, int(allocated.group(1))


def _stop(ssh: Proc | None, sshd: Proc) -> None:
    """The client first: its connection's sshd processes then end by themselves and the listener reaps them
    (killed first, the listener would leave them to init). Whatever is still running after that is ended by
    its pid."""
    connection = descendants(sshd.pid)
    if ssh is not None:
        ssh.stop(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(AssertionError):  # not in time: killed below
        wait_for(
            lambda: not any(alive(pid) for pid in connection),
            STOP_TIMEOUT_S,
            "sshd's connection processes to exit",
            interval=POLL_S,
        )
    for pid in connection + descendants(sshd.pid):
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    sshd.stop(timeout=STOP_TIMEOUT_S)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
