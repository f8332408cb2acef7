"""Self-signed bootstrap certificates: nginx starts (and serves ACME challenges) before a real one exists."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["certificate_fingerprint", "write_self_signed"]


def write_self_signed(hosts: Sequence[str], cert_path: str | Path, key_path: str | Path, *, days: int = 30) -> None:
    """Write a fresh ECDSA P-256 key and a self-signed certificate for ``hosts`` (PEM; key mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "edge-bootstrap")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = Path(key_path), Path(cert_path)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(key_file, key_pem, 0o600)
    _write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 fingerprint (hex) of the first certificate in a PEM (or DER) blob."""
    cert = (
        x509.load_pem_x509_certificate(pem)
        if pem.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(pem)
    )
    return cert.fingerprint(hashes.SHA256()).hex()


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
