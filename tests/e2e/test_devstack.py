"""The README's run command: ``scripts/devstack.py`` brings the whole stack up, and Ctrl-C takes it all down.

Every port and the state directory are this test's own, so it never collides with a developer's running
``./scripts/dev``. The bundled small model is served even when an Ollama answers, so the answer is real
and the same everywhere.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx

from cloudtolocalllm.devkit.launch import Proc, alive, descendants
from cloudtolocalllm.devkit.procs import REPO, free_port

REAL_MODEL = "smollm2:135m"


def _start_devstack(command: list[str], log_dir: Path) -> Proc:
    """Start the dev stack (its own output in ``log_dir``/devstack.log) and wait until it says it runs."""
    proc = Proc("devstack", command, {}, log_dir)
    try:
        proc.wait_for_output("dev stack is running", 150)
    except BaseException:
        proc.stop(signal.SIGINT, timeout=60)
        raise
    time.sleep(0.5)  # the rest of the banner
    return proc


def _part_pids(root: int, marker: str) -> list[int]:
    """The processes under ``root`` whose command line contains ``marker``."""
    found = []
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and alive(pid):
            found.append(pid)
    return found


def _chat_until_it_answers(api: str, token: str, timeout: float) -> float:
    """Seconds until a chat through api-backend and the bridge answers again (fails after ``timeout``)."""
    started = time.monotonic()
    last = "no attempt yet"
    while time.monotonic() - started < timeout:
        try:
            answer = httpx.post(
                f"{api}/api/ollama/api/chat",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": REAL_MODEL, "messages": [{"role": "user", "content": "Say hello"}], "stream": False},
                timeout=30,
            )
            if answer.status_code == 200 and answer.json()["message"]["content"].strip():
                return time.monotonic() - started
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise AssertionError(f"no answer within {timeout}s after the restart; last: {last}")


def test_devstack_restarts_a_part_that_exits_while_the_rest_keeps_running(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("api", "model")}
    command = [sys.executable, str(REPO / "scripts" / "devstack.py"), "--no-edge", "--bundled-model"]
    command += ["--dev-dir", str(tmp_path), "--api-port", str(ports["api"]), "--model-port", str(ports["model"])]
    proc = _start_devstack(command, tmp_path)
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        token = re.search(r"export TOKEN=(\S+)", proc.log_text())
        assert token, proc.log_text()
        _chat_until_it_answers(api, token.group(1), 30)

        for part, marker in (("local-model", "llama_cpp.server"), ("api-backend", "cloudtolocalllm-api-backend")):
            (pid,) = _part_pids(proc.pid, marker)
            others = set(descendants(proc.pid)) - {pid} - set(descendants(pid))
            os.kill(pid, signal.SIGKILL)  # a crash, not a clean stop
            recovered = _chat_until_it_answers(api, token.group(1), 60)
            # The supervisor's own readiness check (the model's self-test) may finish after the first chat.
            proc.wait_for_output(f"devstack: {part} is back up", 60)
            text = proc.log_text()
            assert f"devstack: {part} exited (killed by SIGKILL); restarting in 0.5s" in text, text[-3000:]
            assert proc.alive(), "the dev stack stopped"
            assert all(alive(p) for p in others), f"a part other than {part} stopped"
            print(f"{part}: a chat answered again {recovered:.1f}s after it was killed")
    finally:
        status = proc.stop(signal.SIGINT, timeout=60)  # what Ctrl-C does
    assert status == 0, proc.log_text()[-4000:]


def test_devstack_serves_the_app_site_docs_and_chat_through_the_edge_and_stops_everything(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("https", "http", "edge-admin", "api", "app", "site", "model")}
    command = [sys.executable, str(REPO / "scripts" / "devstack.py"), "--bundled-model", "--dev-dir", str(tmp_path)]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    proc = _start_devstack(command, tmp_path)
    children: set[int] = set()
    try:
        text = proc.log_text()
        https = ports["https"]
        assert f"https://app.localhost:{https}/" in text
        token = re.search(r"export TOKEN=(\S+)", text)
        assert token, text
        children = set(descendants(proc.pid))
        assert len(children) >= 7  # model, api-backend, bridge, two static servers, edge, nginx (+ workers)

        # *.localhost resolves to loopback in browsers and curl, not in Python: connect to 127.0.0.1 by name.
        with httpx.Client(base_url=f"https://127.0.0.1:{https}", verify=False, timeout=60) as edge:  # noqa: S501

            def get(host: str, path: str) -> httpx.Response:
                return edge.get(path, headers={"Host": f"{host}:{https}"})

            app = get("app.localhost", "/")
            assert app.status_code == 200
            assert "<title>" in app.text
            config = get("app.localhost", "/config.json").json()
            assert config["apiBase"] == ""  # one origin with the API, as in production
            assert config["issuer"] == f"http://127.0.0.1:{ports['api']}/dev-issuer"
            assert "CloudToLocalLLM" in get("localhost", "/").text
            assert get("docs.localhost", "/docs/").status_code == 200
            assert get("localhost", "/downloads/").status_code == 200
            discovery = httpx.get(config["issuer"] + "/.well-known/openid-configuration", timeout=5).json()
            assert discovery["token_endpoint"] == config["issuer"] + "/oauth/token"

            answer = edge.post(
                "/api/ollama/api/chat",
                headers={"Host": f"app.localhost:{https}", "Authorization": f"Bearer {token.group(1)}"},
                json={"model": REAL_MODEL, "messages": [{"role": "user", "content": "Say hello"}], "stream": False},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["message"]["content"].strip()

        redirect = httpx.get(
            f"http://127.0.0.1:{ports['http']}/", headers={"Host": f"app.localhost:{ports['http']}"}, timeout=5
        )
        assert redirect.status_code == 301
        assert redirect.headers["location"] == f"https://app.localhost:{https}/"
    finally:
        status = proc.stop(signal.SIGINT, timeout=60)  # what Ctrl-C does
    assert status == 0, proc.log_text()[-4000:]
    left = {pid for pid in children if alive(pid)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after Ctrl-C: {left}"
