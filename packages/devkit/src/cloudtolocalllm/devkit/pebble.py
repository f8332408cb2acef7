"""pebble (Let's Encrypt's test CA) with pebble-challtestsrv as its DNS, on loopback, for real ACME tests.

pebble validates http-01 for real: its VA resolves every name through challtestsrv (every A query answers
127.0.0.1, no AAAA) and fetches the challenge from ``http://<name>:<http_port>/``, i.e. from the edge under test.
Used by the edge's test_acme.py and by tests/deploy/test_ssl_setup.py (the devkit's ``acme`` extra).
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudtolocalllm.devkit.launch import Proc
from cloudtolocalllm.edge.certs import write_self_signed


@dataclass
class Pebble:
    directory: str  # the ACME directory URL, for certbot's --server
    management: str  # roots and intermediates: what issued certificates must chain to
    ca_bundle: Path  # pebble's own HTTPS certificate (self-signed), for certbot and for us
    http_port: int  # where the VA fetches http-01 challenges

    def get(self, path: str) -> str:
        response = httpx.get(
            self.management + path, verify=ssl.create_default_context(cafile=str(self.ca_bundle)), timeout=10
        )
        response.raise_for_status()
        return response.text


@contextmanager
def running_pebble(
    folder: Path, http_port: int, *, free_port: Callable[[], int], timeout: float = 60
) -> Iterator[Pebble]:
    """Start challtestsrv and pebble (configuration and logs in ``folder``); both stopped on exit.

    ``free_port`` picks pebble's own ports: the caller's, as a deployment test must keep them apart from the
    ones it hands to containers.
    """
    for tool in ("pebble", "pebble-challtestsrv"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is not installed: run scripts/system-deps.sh")
    folder.mkdir()
    cert, key = folder / "cert.pem", folder / "key.pem"
    write_self_signed(["localhost", "127.0.0.1"], cert, key)
    cert.chmod(0o644)  # also mounted into the certbot container (uid 65532)
    dns, api, management = free_port(), free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{api}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (folder / "pebble.json").write_text(json.dumps(config))
    dns_argv = [
        "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-management", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    pebble_env = {
        "PEBBLE_VA_NOSLEEP": "1",  # no random 0-5 s sleep before each validation
        "PEBBLE_WFE_NONCEREJECT": "0",  # no deliberately rejected nonces
        "PEBBLE_AUTHZREUSE": "0",  # every order (a forced renewal too) is validated again, through the edge
    }
    pebble_argv = ["pebble", "-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"]
    processes: list[Proc] = []
    try:
        for argv, name, env in ((dns_argv, "challtestsrv", {}), (pebble_argv, "pebble", pebble_env)):
            processes.append(Proc(name, argv, env, folder))
        pebble = Pebble(f"https://127.0.0.1:{api}/dir", f"https://127.0.0.1:{management}", cert, http_port)
        _wait_until_answering(pebble, processes, timeout)
        yield pebble
    finally:
        for process in reversed(processes):
            process.stop(timeout=10)


def _wait_until_answering(pebble: Pebble, processes: list[Proc], timeout: float) -> None:
    """Until the management API and the ACME directory answer; at once (with the logs) if either process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not all(process.alive() for process in processes):
            logs = "\n".join(f"{process.log_path.name}:\n{process.log_text()}" for process in processes)
            raise AssertionError(f"pebble or challtestsrv exited:\n{logs}")
        try:
            pebble.get("/roots/0")
            context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
            httpx.get(pebble.directory, verify=context, timeout=10).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for pebble") from None
        time.sleep(0.1)
