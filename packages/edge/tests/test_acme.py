"""ACME for real: certbot's webroot flow against pebble (Let's Encrypt's test CA) on loopback.

pebble validates http-01 for real: its VA resolves the names through pebble-challtestsrv's DNS (every A query
answers 127.0.0.1, no AAAA) and fetches ``http://<name>:<the edge's HTTP port>/.well-known/acme-challenge/...``
from the edge, which serves certbot's webroot. Then the edge notices the new files, reloads, and serves the
certificate pebble signed; a forced renewal is picked up the same way. The certbot calls go through
``certbot/certbot-loop.sh``, the certbot container's command.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from cloudtolocalllm.devkit.pebble import Pebble, running_pebble

from .controller_harness import RunningController, file_fingerprint, served_fingerprint
from .edge_harness import free_port, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "certbot" / "certbot-loop.sh"
DOMAINS = ["localhost", "app.localhost", "docs.localhost"]


@pytest.fixture
def pebble_for(tmp_path: Path) -> Iterator[Callable[[int], Pebble]]:
    """Start pebble validating http-01 on the given HTTP port (the edge's, known once it runs)."""
    if shutil.which("certbot") is None:
        pytest.fail("certbot is not installed: run scripts/system-deps.sh")
    with ExitStack() as stack:
        yield lambda http_port: stack.enter_context(running_pebble(tmp_path / "pebble", http_port, free_port=free_port))


def _certbot(pebble: Pebble, work: Path, webroot: str, *extra: str) -> None:
    env = {
        **os.environ,
        "CERTBOT_DOMAINS": ",".join(DOMAINS),
        "CERTBOT_WEBROOT": webroot,
        "CERTBOT_CONFIG_DIR": str(work / "config"),
        "CERTBOT_SERVER": pebble.directory,
        "CERTBOT_RENEW_INTERVAL": "0",
        "REQUESTS_CA_BUNDLE": str(pebble.ca_bundle),
    }
    result = subprocess.run(
        [
            "sh",
            str(SCRIPT),
            "--work-dir",
            str(work / "work"),
            "--logs-dir",
            str(work / "logs"),
            # Unattended renewals wait up to 8 minutes at random (spreading load on Let's Encrypt); not here.
            "--no-random-sleep-on-renew",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_certbot_webroot_against_pebble_then_the_edge_serves_the_issued_certificate(
    make_controller: Callable[..., RunningController], pebble_for: Callable[[int], Pebble], tmp_path: Path
) -> None:
    live = tmp_path / "letsencrypt" / "config" / "live" / "localhost"
    running = make_controller(tls=(live / "fullchain.pem", live / "privkey.pem"))
    assert running.metric("edge_certificate_self_signed") == 1  # nothing issued yet: bootstrap
    pebble = pebble_for(running.edge.http_port)
    webroot = running.controller.config.acme.webroot
    port = running.edge.https_port

    _certbot(pebble, tmp_path / "letsencrypt", webroot)
    wait_for(lambda: served_fingerprint(port) == file_fingerprint(live / "cert.pem"), "the issued certificate")
    assert running.metric("edge_certificate_self_signed") == 0

    # Issued by pebble's intermediate, and the whole chain verifies against pebble's root for every name.
    intermediate = x509.load_pem_x509_certificate(pebble.get("/intermediates/0").encode())
    issued = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    assert issued.issuer == intermediate.subject
    issued.verify_directly_issued_by(intermediate)
    trust = ssl.create_default_context(cadata=pebble.get("/roots/0"))
    with httpx.Client(verify=trust) as client:
        for host in DOMAINS:  # chain and host name verified for each name (SNI = the name)
            response = client.get(
                f"https://127.0.0.1:{port}/health", headers={"Host": host}, extensions={"sni_hostname": host}
            )
            assert response.status_code == 200

    # The renewal command of the certbot container, forced: validated again through the edge, picked up.
    first = file_fingerprint(live / "cert.pem")
    _certbot(pebble, tmp_path / "letsencrypt", webroot, "--force-renewal")
    renewed = file_fingerprint(live / "cert.pem")
    assert renewed != first
    wait_for(lambda: served_fingerprint(port) == renewed, "the renewed certificate")
    assert running.metric("edge_reloads_total", result="rejected") == 0
