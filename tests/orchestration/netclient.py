"""HTTP client run inside the Swarm test's network namespace (``nsenter --net=... python netclient.py``).

``get URL [--host NAME]``: one request, its status, headers and body as JSON (``--method``, ``--json BODY``
for another method, with a JSON body).
``load URL [--host NAME]``: requests from several threads until SIGTERM, then the count of each outcome
(an HTTP status, or the exception's name) as JSON. ``CTLLM_TEST_TOKEN``, if set, is sent as the bearer
token. Standard library only: the script runs in a namespace where nothing else of the test is reachable.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.parse


def request(
    url: str, host: str | None, timeout: float = 10, method: str = "GET", body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        # The edge serves its self-signed bootstrap certificate: nothing here can issue a real one.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        headers = {"Host": host} if host else {}
        if token := os.environ.get("CTLLM_TEST_TOKEN"):  # from the environment: never on a command line
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection.request(method, parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body
    finally:
        connection.close()


def load(url: str, host: str | None, threads: int, pause: float) -> dict[str, int]:
    stop = threading.Event()
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            try:
                outcome = str(request(url, host)[0])
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
            with lock:
                counts[outcome] += 1
            time.sleep(pause)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    print("started", file=sys.stderr, flush=True)
    while not stop.wait(0.2):
        pass
    for thread in workers:
        thread.join()
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["get", "load"])
    parser.add_argument("url")
    parser.add_argument("--host")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.01)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--json", help="a JSON request body")
    args = parser.parse_args()
    if args.mode == "get":
        status, headers, body = request(args.url, args.host, method=args.method, body=args.json)
        print(json.dumps({"status": status, "headers": headers, "body": body.decode(errors="replace")}))
    else:
        print(json.dumps(load(args.url, args.host, args.threads, args.pause)))


if __name__ == "__main__":
    main()
