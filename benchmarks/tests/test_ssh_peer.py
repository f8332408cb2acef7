"""The ssh -R peer really carries bytes to a backend, and leaves no sshd or ssh behind."""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtolocalllm.devkit.launch import alive

from ..ssh_peer import ssh_reverse_tunnel

pytestmark = pytest.mark.slow

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # several ssh channel windows, not a multiple of any buffer size


class _Echo(socketserver.BaseRequestHandler):
    """Reads a length-prefixed body and sends back its SHA-256, then the body itself."""

    def handle(self) -> None:
        size = int.from_bytes(_read_exactly(self.request, 8), "big")
        body = _read_exactly(self.request, size)
        self.request.sendall(hashlib.sha256(body).digest() + body)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        data = sock.recv(min(1 << 16, size - len(chunks)))
        if not data:
            raise ConnectionError(f"closed after {len(chunks)} of {size} bytes")
        chunks += data
    return bytes(chunks)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _round_trip(port: int, payload: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(len(payload).to_bytes(8, "big") + payload)
        return _read_exactly(sock, 32), _read_exactly(sock, len(payload))


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_bytes_reach_the_backend_and_come_back_unchanged(echo_port: int, tmp_path: Path) -> None:
    with ssh_reverse_tunnel(echo_port, tmp_path) as tunnel:
        assert tunnel.port != echo_port
        digest, echoed = _round_trip(tunnel.port, PAYLOAD)
        # Twice at once: each connection is a channel of its own over the one ssh connection.
        threads_out: list[tuple[bytes, bytes]] = []
        threads = [
            threading.Thread(target=lambda: threads_out.append(_round_trip(tunnel.port, PAYLOAD))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert digest == hashlib.sha256(PAYLOAD).digest()  # what the backend received
    assert echoed == PAYLOAD  # and what came back from it
    assert threads_out == [(digest, PAYLOAD)] * 2
    assert "OpenSSH" in tunnel.version
    assert "Accepted publickey" in (tmp_path / "sshd-0.log").read_text()  # the private sshd, the temporary key


def test_nothing_is_left_running_after_the_block(echo_port: int, tmp_path: Path) -> None:
    with ssh_reverse_tunnel(echo_port, tmp_path) as tunnel:
        _round_trip(tunnel.port, b"hello")  # a connection through sshd is open, so it has started processes
        pids = tunnel.pids()
        assert len(pids) >= 3, pids  # ssh, sshd's listener, at least one process for the connection
        assert all(alive(pid) for pid in pids)
        sshd_port = int((tmp_path / "sshd_config").read_text().split("ListenAddress 127.0.0.1:", 1)[1].split()[0])
    assert [pid for pid in pids if alive(pid)] == []
    assert _refuses(tunnel.port)  # the forwarded port is closed
    assert _refuses(sshd_port)  # and so is sshd's own


def test_an_error_inside_the_block_still_stops_everything(echo_port: int, tmp_path: Path) -> None:
    pids: list[int] = []

    def fail_while_tunnelling() -> None:
        with ssh_reverse_tunnel(echo_port, tmp_path) as tunnel:
            _round_trip(tunnel.port, b"hello")
            pids.extend(tunnel.pids())
            raise KeyError("the benchmark failed")

    with pytest.raises(KeyError):
        fail_while_tunnelling()
    assert pids
    assert [pid for pid in pids if alive(pid)] == []
