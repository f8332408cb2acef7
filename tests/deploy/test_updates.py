"""Updates of a running deployment: no failed request during --no-downtime updates, a real rollback, logs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from cloudtolocalllm.devkit.ollama import OllamaDouble
from cloudtolocalllm.devkit.procs import Proc, start_bridge

from .conftest import APP_HOST, SITE_HOST, Deployment, docker, wait_for
from .load import Load, chat_stream, page

MODEL = "deploy-test:latest"


def _backend() -> OllamaDouble:
    """The bridge's local "Ollama": /api/chat streams 8 NDJSON lines 50 ms apart, so that a stream is in flight
    for a while (what a switch of api-backend instances may cut)."""
    tag = {"name": MODEL, "model": MODEL, "size": 1, "digest": "0" * 64}
    return OllamaDouble(models=[MODEL], tags=[tag], version="0.5.0", chat_tokens=8, chat_delay_s=0.05)


def _bridges(deployment: Deployment) -> list[dict[str, object]]:
    response = httpx.get(
        f"{deployment.edge_url}/api/bridge/status",
        headers={"Host": APP_HOST, "Authorization": f"Bearer {deployment.token()}"},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json()["bridges"])


def _start_bridge(deployment: Deployment, backend_url: str) -> Proc:
    token_file = deployment.root / "bridge-token"
    token_file.write_text(deployment.token())
    return start_bridge(
        deployment.root,
        cloud=deployment.edge_url,  # through the edge: Host 127.0.0.1 is the app site
        token_file=token_file,
        backend=backend_url,
        kind="ollama",
        state_dir=deployment.root / "bridge-state",
        name="deploy-bridge",
    )


def test_no_downtime_updates_of_static_site_flutter_app_and_api_backend(deployment: Deployment) -> None:
    for service in ("static-site", "flutter-app", "api-backend"):
        deployment.run_tag(service, "v1")  # so each update below is a real change of version
        assert deployment.service_health(service)["version"] != "2.0.0-deploytest"
    with _backend() as backend:
        bridge = _start_bridge(deployment, backend.url)
        try:
            wait_for(lambda: any(b["name"] == "deploy-bridge" for b in _bridges(deployment)), "the bridge", 120)
            edge = deployment.edge_url
            load = Load(
                {
                    "static-site": (page(f"{edge}/", SITE_HOST, b"<html"), 2),
                    "flutter-app": (page(f"{edge}/", APP_HOST, b"<html"), 2),
                    "api-backend": (chat_stream(f"{edge}/api/ollama/api/chat", APP_HOST, deployment.token(), MODEL), 3),
                }
            )
            windows: dict[str, tuple[float, float]] = {}
            with load:
                for name in load.tallies:
                    load.wait_for_successes(name, 10)
                for service in ("static-site", "flutter-app", "api-backend"):
                    (old,) = deployment.running(service)
                    before = deployment.pool(service)
                    docker("tag", deployment.v2[service], deployment.image(service))
                    started = time.monotonic()
                    deployment.script("update-service.sh", service, "--no-downtime", "--backup")
                    windows[service] = (started, time.monotonic())
                    # A new container serves the new image; the old one left the pool and is gone.
                    (new,) = deployment.running(service)
                    assert new["Id"] != old["Id"]
                    assert deployment.service_health(service)["version"] == "2.0.0-deploytest"
                    assert deployment.pool(service) != before
                    assert len(deployment.pool(service)) == 1
                    for name in load.tallies:
                        load.wait_for_successes(name, 10)
                wait_for(lambda: any(b["name"] == "deploy-bridge" for b in _bridges(deployment)), "the bridge back")
                load.wait_for_successes("api-backend", 10)
            assert bridge.alive(), "the bridge process exited"
        finally:
            bridge.stop(timeout=30)

    report = {
        name: {
            "requests": tally.total,
            "failed": len(tally.failures),
            "failures": sorted({problem for _, problem in tally.failures}),
            "update_s": round(windows[name][1] - windows[name][0], 1),
            # From the first failed request to the last (0 when there is none).
            "failing_for_s": round(tally.failures[-1][0] - tally.failures[0][0], 2) if tally.failures else 0,
        }
        for name, tally in load.tallies.items()
    }
    print("\nzero-downtime updates:", json.dumps(report, indent=2))
    (deployment.root / "zero-downtime-report.json").write_text(json.dumps(report, indent=2))
    for name in ("static-site", "flutter-app"):
        assert load.tallies[name].failures == [], report[name]
        assert load.tallies[name].ok > 20
    api = load.tallies["api-backend"]
    assert api.ok > 20
    # api-backend: the bridge reconnects to the new instance, which holds requests sent in that second until
    # it is back (API_RECONNECT_GRACE_S): only a stream in flight at the switch may end, with an error.
    start, end = windows["api-backend"]
    for at, problem in api.failures:
        assert start <= at <= end + 5, f"a failure outside the api-backend update: {problem}"
        assert "(in flight)" in problem, problem


def test_rollback_restores_the_previous_image(deployment: Deployment) -> None:
    service = "static-site"
    docker("tag", deployment.image(service, "v1"), deployment.image(service))
    deployment.script("update-service.sh", service)
    v1 = deployment.service_health(service)["version"]
    assert v1 != "2.0.0-deploytest"

    docker("tag", deployment.v2[service], deployment.image(service))
    deployment.script("update-service.sh", service, "--no-downtime", "--backup")
    assert deployment.service_health(service)["version"] == "2.0.0-deploytest"
    assert (
        docker("image", "inspect", "-f", "{{.Id}}", deployment.image(service, "backup")).strip()
        == docker("image", "inspect", "-f", "{{.Id}}", deployment.image(service, "v1")).strip()
    )

    deployment.script("update-service.sh", service, "--rollback")
    assert deployment.service_health(service)["version"] == v1
    # Sticky: the service's tag is v1 again (a later `docker-compose up -d` keeps it); v2 is kept aside.
    image_ids = {tag: docker("image", "inspect", "-f", "{{.Id}}", deployment.image(service, tag)).strip()
                 for tag in ("latest", "v1", "v2", "rolled-back")}  # fmt: skip
    assert image_ids["latest"] == image_ids["v1"]
    assert image_ids["rolled-back"] == image_ids["v2"]
    # The edge serves the rolled-back instance.
    response = httpx.get(f"{deployment.edge_url}/", headers={"Host": SITE_HOST}, timeout=10)
    assert response.status_code == 200


def test_nginx_proxy_backup_update_and_rollback_keep_the_pools(deployment: Deployment) -> None:
    running = {service: deployment.pool(service) for service in ("static-site", "flutter-app", "api-backend")}
    (before,) = deployment.running("nginx-proxy")
    deployment.script("update-service.sh", "nginx-proxy", "--backup")
    deployment.script("update-service.sh", "nginx-proxy", "--rollback")
    (after,) = deployment.running("nginx-proxy")
    assert after["Id"] != before["Id"]
    assert after["Image"] == before["Image"]  # the backup of the image it ran
    # The new edge was given the instances that run (not edge.toml's pairs), and serves them.
    assert {service: deployment.pool(service) for service in running} == running
    response = httpx.get(f"{deployment.edge_url}/", headers={"Host": SITE_HOST}, timeout=10)
    assert response.status_code == 200


def test_update_with_build_deploys_the_image_it_built(deployment: Deployment) -> None:
    (before,) = deployment.running("nginx-proxy")
    deployment.script("update-service.sh", "nginx-proxy", "--build")  # nox -s build-nginx-proxy
    (after,) = deployment.running("nginx-proxy")
    built = docker("image", "inspect", "-f", "{{.Id}}", deployment.image("nginx-proxy")).strip()
    assert after["Image"] == built
    assert after["Id"] != before["Id"]
    log = deployment.log.read_text()
    assert re.search(r"deploy: \S+/nginx-proxy:latest is cloudtolocalllm/nginx-proxy:\S+", log), log[-2000:]
    response = httpx.get(f"{deployment.edge_url}/", headers={"Host": SITE_HOST}, timeout=10)
    assert response.status_code == 200


def test_rollback_without_a_backup_is_refused_clearly(deployment: Deployment) -> None:
    result = deployment.script("update-service.sh", "certbot", "--rollback", check=False)
    assert result.returncode == 1
    assert "backup" in result.stderr
    refused = deployment.script("update-service.sh", "nginx-proxy", "--no-downtime", check=False)
    assert refused.returncode == 1
    assert "single entry point" in refused.stderr


def test_the_seed_commands_show_status_and_logs(deployment: Deployment, tmp_path: Path) -> None:
    ps = deployment.compose("ps", production_file_only=True)
    assert ps.returncode == 0, ps.stderr
    for service in ("nginx-proxy", "static-site", "flutter-app", "api-backend"):
        assert f"{deployment.project}_{service}_" in ps.stdout
    assert "(healthy)" in ps.stdout
    logs = deployment.compose("logs", "--no-color", "--tail=20", "flutter-app", production_file_only=True)
    assert logs.returncode == 0, logs.stderr
    assert '"service": "flutter-app"' in logs.stdout or '"service":"flutter-app"' in logs.stdout

    # The guide's look at the edge's pools (-T: no terminal here; its admin port is the test's).
    port = deployment.env["EDGE_ADMIN_PORT"]
    status = deployment.compose(
        "exec", "-T", "nginx-proxy", "python3", "-c",
        f"import urllib.request as r; print(r.urlopen('http://127.0.0.1:{port}/status').read().decode())",
        production_file_only=True,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert {u["pool"] for u in json.loads(status.stdout)["upstreams"]} == {"static-site", "flutter-app", "api-backend"}

    deployment.script("export-logs.sh", "--dir", str(tmp_path / "logs"))
    for service in ("nginx-proxy", "static-site", "flutter-app", "api-backend", "certbot"):
        assert (tmp_path / "logs" / f"{service}.log").exists()
    lines = (tmp_path / "logs" / "api-backend.log").read_text().splitlines()
    assert lines
    assert all(json.loads(line)["service"] == "api-backend" for line in lines if line.startswith("{"))


def test_the_containers_run_hardened_with_rotated_logs(deployment: Deployment) -> None:
    for service in ("nginx-proxy", "static-site", "flutter-app", "api-backend"):
        (container,) = deployment.running(service)
        host = container["HostConfig"]
        assert container["Config"]["User"] == "65532:65532", service  # type: ignore[index]
        assert host["ReadonlyRootfs"] is True, service  # type: ignore[index]
        assert host["CapDrop"] == ["ALL"], service  # type: ignore[index]
        assert host["RestartPolicy"]["Name"] == "unless-stopped", service  # type: ignore[index]
        assert host["Memory"] > 0, service  # type: ignore[index]
        assert host["NanoCpus"] > 0, service  # type: ignore[index]
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "5", "max-size": "10m"}}, service  # type: ignore[index]
        assert container["State"]["Health"]["Status"] == "healthy", service  # type: ignore[index]
        rows = [line.split() for line in docker("top", str(container["Id"]), "-o", "pid,uid").splitlines()[1:]]
        assert rows, service
        assert {uid for _pid, uid in rows} == {"65532"}, service  # every process, nginx's workers included
