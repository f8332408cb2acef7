"""ACME for real: certbot's webroot flow against pebble (Let's Encrypt's test CA) on loopback.

pebble validates http-01 for real: its VA resolves the names through pebble-challtestsrv's DNS (every A query
answers 127.0.0.1, no AAAA) and fetches ``http://<name>:<the edge's HTTP port>/.well-known/acme-challenge/...``
from the edge, which serves certbot's webroot. Then the edge notices the new files, reloads, and serves the
certificate pebble signed; a forced renewal is picked up the same way. The certbot calls go through
``certbot/certbot-loop.sh``, the certbot container's command.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from cloudtolocalllm.edge.certs import write_self_signed
from controller_harness import RunningController, file_fingerprint, served_fingerprint
from edge_harness import free_port, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "certbot" / "certbot-loop.sh"
DOMAINS = ["localhost", "app.localhost", "docs.localhost"]


@dataclass
class Pebble:
    directory: str
    management: str
    ca_bundle: Path  # pebble's own HTTPS certificate (self-signed), for certbot and for us

    def get(self, path: str) -> str:
        response = httpx.get(self.management + path, verify=ssl.create_default_context(cafile=str(self.ca_bundle)))
        response.raise_for_status()
        return response.text


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def pebble_for(tmp_path: Path) -> Iterator[Callable[[int], Pebble]]:
    """Start challtestsrv (DNS) and pebble, validating http-01 on the given HTTP port."""
    for tool in ("pebble", "pebble-challtestsrv", "certbot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/system-deps.sh")
    processes: list[subprocess.Popen[bytes]] = []

    def start(http_port: int) -> Pebble:
        folder = tmp_path / "pebble"
        folder.mkdir()
        cert, key = folder / "cert.pem", folder / "key.pem"
        write_self_signed(["localhost", "127.0.0.1"], cert, key)
        dns, api, management = free_port(), free_port(), free_port()
        with (folder / "challtestsrv.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        "pebble-challtestsrv",
                        "-defaultIPv4",
                        "127.0.0.1",
                        "-defaultIPv6",
                        "",
                        "-dns01",
                        f"127.0.0.1:{dns}",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                        "-management",
                        f"127.0.0.1:{free_port()}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{api}",
                "managementListenAddress": f"127.0.0.1:{management}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": http_port,  # where the VA fetches http-01 challenges: the edge
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (folder / "pebble.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # no random 0-5 s sleep before each validation
            "PEBBLE_WFE_NONCEREJECT": "0",  # no deliberately rejected nonces
            "PEBBLE_AUTHZREUSE": "0",  # the renewal validates again, through the edge
        }
        with (folder / "pebble.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    ["pebble", "-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        pebble = Pebble(f"https://127.0.0.1:{api}/dir", f"https://127.0.0.1:{management}", cert)

        def answering() -> bool:
            try:
                pebble.get("/roots/0")
                httpx.get(pebble.directory, verify=ssl.create_default_context(cafile=str(cert))).raise_for_status()
            except httpx.HTTPError:
                return all(p.poll() is None for p in processes) is False
            return True

        wait_for(answering, "pebble")
        assert all(p.poll() is None for p in processes), (folder / "pebble.log").read_text()
        return pebble

    yield start
    for process in reversed(processes):
        _stop(process)


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
