"""``deploy-multi-container.sh --ssl-setup`` for real: the certbot container obtains a certificate from pebble
(Let's Encrypt's test CA, on loopback) through the edge's ACME webroot, the edge serves it, and the seed's
renewal command works.

pebble validates http-01 for real: its VA resolves every name through pebble-challtestsrv's DNS (answering
127.0.0.1) and fetches the challenge from the edge's HTTP port, which serves ``certbot/www``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from cloudtolocalllm.devkit.pebble import Pebble, running_pebble

from .conftest import APP_HOST, SITE_HOST, deployed, free_port, wait_for


@pytest.fixture
def pebble_and_ports(tmp_path: Path) -> Iterator[tuple[Pebble, int]]:
    https_port = free_port()
    # pebble validates on the edge's HTTP port, which the deployment picks: reserve it first.
    with running_pebble(tmp_path / "pebble", free_port(), free_port=free_port) as pebble:
        yield pebble, https_port


def _served_certificate(port: int, server_name: str) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_ssl_setup_obtains_the_certificate_through_the_edge_and_renews_on_demand(
    tmp_path: Path, pebble_and_ports: tuple[Pebble, int]
) -> None:
    pebble, https_port = pebble_and_ports
    http_port = pebble.http_port
    domains = f"CERTBOT_DOMAINS={SITE_HOST},{APP_HOST}\nCERTBOT_SERVER={pebble.directory}\n"
    override = (
        "  certbot:\n"
        "    environment:\n"
        "      REQUESTS_CA_BUNDLE: /pebble-ca.pem\n"  # pebble's own HTTPS certificate
        "    volumes:\n"
        f"      - {pebble.ca_bundle}:/pebble-ca.pem:ro\n"
    )
    root = tmp_path / "deployment"
    root.mkdir()
    with deployed(
        root, https_port=https_port, http_port=http_port, domains_env=domains, override=override,
        deploy_args=("--ssl-setup",), v2=False,
    ) as deployment:  # fmt: skip
        (certbot,) = deployment.running("certbot")
        assert certbot["Config"]["User"] == "65532:65532"  # type: ignore[index]
        intermediate = x509.load_pem_x509_certificate(pebble.get("/intermediates/0").encode())

        def issued_by_pebble() -> bool:
            return _served_certificate(https_port, APP_HOST).issuer == intermediate.subject

        wait_for(issued_by_pebble, "the edge to serve the certificate pebble issued", timeout=180)
        live = deployment.root / "certbot" / "live" / SITE_HOST / "fullchain.pem"
        assert live.exists()
        # The whole chain and the host name verify against pebble's root.
        trust = ssl.create_default_context(cadata=pebble.get("/roots/0"))
        with httpx.Client(verify=trust, timeout=10) as client:
            response = client.get(
                f"https://127.0.0.1:{https_port}/", headers={"Host": SITE_HOST}, extensions={"sni_hostname": SITE_HOST}
            )
        assert response.status_code == 200
        assert "<html" in response.text
        redirect = httpx.get(f"http://127.0.0.1:{http_port}/docs/", headers={"Host": SITE_HOST}, timeout=10)
        assert redirect.status_code == 301
        assert redirect.headers["location"] == f"https://{SITE_HOST}:{https_port}/docs/"

        # The seed's renewal command: one attempt, certbot's exit status (nothing is due yet: exit 0). `run`
        # links the one-off container to the service's running one, which the host network refuses: here
        # the certbot loop is stopped first (on a compose network the command works while it runs).
        stop = deployment.compose("--profile", "ssl-setup", "stop", "certbot")
        assert stop.returncode == 0, stop.stderr
        renew = deployment.compose("--profile", "ssl-setup", "run", "--rm", "certbot", "renew")
        assert renew.returncode == 0, renew.stdout + renew.stderr
        assert "not yet due for renewal" in renew.stdout + renew.stderr
