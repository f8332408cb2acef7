"""The deploy tool behind scripts/deploy/*.sh (docs/deploy/guide.md):

    deploy [--build] [--ssl-setup]                                  deploy-multi-container.sh
    update <service> [--no-downtime] [--backup] [--rollback] [--build]   update-service.sh
    export-logs [--since WHEN] [<service> ...]                      export-logs.sh

A zero-downtime update (static-site, flutter-app, api-backend): a second container of the service starts
next to the first on the new image, becomes healthy, joins the edge's pool, the old one leaves the pool
(both changes are validated graceful reloads of the edge: ``cloudtolocalllm-edge set-pool``; api-backend's
pool changes in one step, see MOVE_AT_ONCE), and only then gets SIGTERM and drains. On the host network (the
tests' tests/deploy/host-network.yml) the two instances cannot share a port: the new one takes the other
port of the pair {2k, 2k+1} that holds the old one's, through the ``<SERVICE>_PORT`` variable.

``--backup`` tags the image the service runs now ``<image>:backup``; ``--rollback`` points the service's tag
back at that image (keeping the replaced one as ``:rolled-back``) and updates to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from compose import NONROOT, ROOT, Compose, Container, DeployError, docker, image_id, run, wait_healthy

SERVICES = ("nginx-proxy", "static-site", "flutter-app", "api-backend", "certbot")
POOLED = ("static-site", "flutter-app", "api-backend")  # the edge's pools, named like the services
# A request must reach the api-backend that holds the user's bridge, and a new instance holds none until the
# old one's GoAway (at SIGTERM) makes the bridges reconnect: old and new side by side would send half the
# requests to an instance without bridges. So the pool goes from old to new in one reload, and the old
# instance is stopped right after it (its streams in flight finish; the bridges keep their old session for
# them while they dial the new one).
MOVE_AT_ONCE = ("api-backend",)
SSL = ("ssl-setup",)
CONFIG_FILES = {
    "auth0.env": "docker/compose/auth0.env.example",
    "domains.env": "docker/compose/domains.env.example",
    "edge.toml": "packages/edge/edge.example.toml",
    "app-config.json": "docker/compose/app-config.json.example",
}
HEALTH_TIMEOUT_S = float(os.environ.get("DEPLOY_HEALTH_TIMEOUT_S", "180"))


def say(message: str) -> None:
    print(f"deploy: {message}", flush=True)


# -- the edge -----------------------------------------------------------------------------------------------


def set_pool(compose: Compose, pool: str, instances: list[Container]) -> None:
    """Make ``instances`` the edge's pool; returns once the edge serves it (a no-op without a running edge)."""
    edges = compose.running("nginx-proxy")
    if not edges:
        say(f"no nginx-proxy runs: pool {pool} not changed")
        return
    addresses = [c.address() for c in instances]
    try:
        docker("exec", edges[0].id, "cloudtolocalllm-edge", "set-pool", pool, *addresses)
    except DeployError as exc:
        raise DeployError(f"the edge did not set pool {pool} = {addresses}: {exc}") from None
    say(f"edge pool {pool}: {' '.join(addresses)}")


def sync_pool(compose: Compose, service: str) -> None:
    if service in POOLED:
        running = compose.running(service)
        if running:
            set_pool(compose, service, running)


# -- images -------------------------------------------------------------------------------------------------


def _image_tags(service: str) -> tuple[str, str]:
    """The image's tags, <version> and <commit>, from the devkit's ``ctllm-images tags`` in the repository."""
    if shutil.which("uv") is None:
        raise DeployError("--build needs uv (python3 -m pip install --user uv nox; ~/.local/bin on PATH)")
    result = subprocess.run(
        ["uv", "run", "--frozen", "--only-group", "devkit", "ctllm-images", "tags", service],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DeployError(f"--build needs the repository: ctllm-images tags {service} failed: {result.stderr.strip()}")
    version, revision = result.stdout.split()
    return version, revision


def build(compose: Compose, service: str) -> None:
    """``nox -s build-<service>``, then the compose file's tag points at this commit's build."""
    nox = shutil.which("nox")
    if nox is None and shutil.which("uvx") is None:
        raise DeployError("--build needs nox (python3 -m pip install --user uv nox; ~/.local/bin on PATH)")
    run([*([nox] if nox else ["uvx", "nox"]), "-s", f"build-{service}"])
    # The build tags <version> and <commit>; the commit tag is exact, the version tag the fallback should a
    # commit land while it ran. The devkit (not this host's Python) knows them.
    version, revision = _image_tags(service)
    built = revision if image_id(revision) else version
    docker("tag", built, compose.image(service))
    say(f"{compose.image(service)} is {built}")


def backup(compose: Compose, service: str) -> None:
    running = compose.running(service, SSL)
    if not running:
        raise DeployError(f"no {service} container runs: there is nothing to back up")
    target = compose.image(service).rsplit(":", 1)[0] + ":backup"
    docker("tag", running[-1].image_id, target)
    say(f"backup: {target} = {running[-1].image_id[:19]} (what {service} runs now)")


def point_at_backup(compose: Compose, service: str) -> None:
    reference = compose.image(service)
    repository = reference.rsplit(":", 1)[0]
    saved = image_id(f"{repository}:backup")
    if saved is None:
        raise DeployError(f"no {repository}:backup image: back up with `update-service.sh {service} --backup` first")
    current = image_id(reference)
    if current is not None and current != saved:
        docker("tag", current, f"{repository}:rolled-back")
    docker("tag", saved, reference)
    say(f"rollback: {reference} = {saved[:19]} (the backup); the replaced image is {repository}:rolled-back")


# -- updates ------------------------------------------------------------------------------------------------


def _pair_port(port: int) -> int:
    return port + 1 if port % 2 == 0 else port - 1


def update_in_place(compose: Compose, service: str) -> None:
    """Recreate the service's container (the seed's plain update: it is away while it restarts)."""
    profiles = SSL if service == "certbot" else ()
    compose("up", "-d", "--no-deps", "--force-recreate", service, profiles=profiles)
    for container in compose.running(service, profiles):
        wait_healthy(container, HEALTH_TIMEOUT_S)
    # A new edge starts from edge.toml: give it the containers that run now, as after a full deploy.
    for pool in POOLED if service == "nginx-proxy" else (service,):
        sync_pool(compose, pool)


def update_without_downtime(compose: Compose, service: str) -> None:
    if service not in POOLED:
        raise DeployError(
            f"--no-downtime needs a pool behind the edge: {service} has none. nginx-proxy is the single entry point "
            "(its configuration changes are graceful reloads; a new image restarts it); certbot serves no traffic."
        )
    old = compose.running(service)
    if not old:
        say(f"no {service} runs yet: starting it")
        update_in_place(compose, service)
        return
    env: dict[str, str] = {}
    if old[0].host_network:
        if len(old) > 1:
            raise DeployError(f"{len(old)} {service} containers share the host network: expected one")
        # The other port of the pair; the host-network override reads <SERVICE>_PORT.
        env[f"{service.upper().replace('-', '_')}_PORT"] = str(_pair_port(old[0].port))
    compose("rm", "--force", service)  # stopped containers only: scaling would start one of them again
    before = set(compose.container_ids(service))
    compose("up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}={len(old) + 1}", service, env=env)
    new = [c for c in compose.running(service) if c.id not in before]
    if not new:
        raise DeployError(f"docker-compose started no new {service} container")
    try:
        for container in new:
            say(f"waiting for {container.name} ({container.address()}) to be healthy")
            wait_healthy(container, HEALTH_TIMEOUT_S)
        if service not in MOVE_AT_ONCE:
            set_pool(compose, service, old + new)
        set_pool(compose, service, new)  # applied: no new request reaches the old instance from here on
    except DeployError:
        say(f"the new {service} did not take over: removing it, {' '.join(c.name for c in old)} keeps serving")
        for container in new:
            docker("rm", "-f", container.id, check=False)
        try:
            set_pool(compose, service, old)
        except DeployError as exc:
            say(f"could not restore the pool ({exc}); the edge's health checks will")
        raise
    for container in old:
        say(f"draining {container.name} (SIGTERM; it finishes what it serves)")
        docker("stop", container.id)  # the compose file's stop_grace_period
        docker("rm", container.id)
    say(f"{service} updated without downtime: {' '.join(c.name for c in new)}")


def update(args: argparse.Namespace) -> None:
    compose = Compose()
    service = args.service
    if args.backup and args.rollback:
        raise DeployError("--backup and --rollback together would back up the image being rolled back")
    if args.build:
        build(compose, service)
    if args.backup:
        backup(compose, service)
    if args.rollback:
        point_at_backup(compose, service)
    if args.no_downtime:
        update_without_downtime(compose, service)
    else:
        update_in_place(compose, service)
    print(compose("ps", capture=True, profiles=SSL if service == "certbot" else ()), end="")


# -- full deploy --------------------------------------------------------------------------------------------


def check_config(compose: Compose) -> None:
    folder = compose.config_dir()
    missing = [name for name in CONFIG_FILES if not (folder / name).is_file()]
    if missing:
        lines = [f"  cp {CONFIG_FILES[name]} {os.path.relpath(folder / name, ROOT)}" for name in missing]
        raise DeployError(f"missing settings in {folder}; create them from the examples and edit:\n" + "\n".join(lines))


def prepare_certbot_dir(compose: Compose) -> None:
    """The certificates and the ACME webroot (the seed's certbot/live, archive, www), writable by uid 65532."""
    folder = compose.certbot_dir()
    (folder / "www").mkdir(parents=True, exist_ok=True)
    if f"{folder.stat().st_uid}:{folder.stat().st_gid}" == NONROOT:
        return
    if os.geteuid() == 0:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, 65532, 65532, follow_symlinks=False)
        return
    # Not root: chown through a throwaway container of the certbot image (root inside, no network).
    docker(
        "run", "--rm", "--network=none", "--user=0:0", f"--volume={folder}:/target", "--entrypoint=chown",
        compose.image("certbot"), "-R", NONROOT, "/target",
    )  # fmt: skip


def deploy(args: argparse.Namespace) -> None:
    compose = Compose()
    check_config(compose)
    prepare_certbot_dir(compose)
    if args.build:
        for service in SERVICES:
            build(compose, service)
    compose("up", "-d", "--remove-orphans")
    for service in ("static-site", "flutter-app", "api-backend", "nginx-proxy"):
        for container in compose.running(service):
            say(f"waiting for {container.name} to be healthy")
            wait_healthy(container, HEALTH_TIMEOUT_S)
    for service in POOLED:
        sync_pool(compose, service)
    if args.ssl_setup:
        compose("up", "-d", "--no-deps", "certbot", profiles=SSL)
        say(
            "certbot obtains the certificate through the edge (which serves a self-signed one until then): "
            "follow it with `docker-compose -f docker-compose.multi.yml logs -f certbot`"
        )
    print(compose("ps", capture=True, profiles=SSL if args.ssl_setup else ()), end="")


# -- logs ---------------------------------------------------------------------------------------------------


def export_logs(args: argparse.Namespace) -> None:
    """logs/<service>.log: what Docker kept (json-file, rotated) of every container of each service."""
    compose = Compose()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    for service in args.services or SERVICES:
        ids = compose.container_ids(service, SSL)
        target = folder / f"{service}.log"
        since = ["--since", args.since] if args.since else []
        with target.open("w") as out:
            for container in Container.inspect(ids):  # oldest first: the file reads in time order
                out.flush()
                # Both streams: the services log JSON to stdout, nginx and certbot also write to stderr.
                subprocess.run(
                    [os.environ.get("DOCKER", "") or "docker", "logs", *since, container.id],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
        say(f"{target}: {len(ids)} container(s)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="deploy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    deploy_cmd = commands.add_parser("deploy", help="deploy every service (deploy-multi-container.sh)")
    deploy_cmd.add_argument("--build", action="store_true", help="build every image first (nox -s build-<image>)")
    deploy_cmd.add_argument("--ssl-setup", action="store_true", help="start certbot (the ssl-setup profile)")
    update_cmd = commands.add_parser("update", help="update one service (update-service.sh)")
    update_cmd.add_argument("service", choices=SERVICES)
    update_cmd.add_argument("--no-downtime", action="store_true", help="new instance first, then drain the old")
    update_cmd.add_argument("--backup", action="store_true", help="tag the image that runs now <image>:backup")
    update_cmd.add_argument("--rollback", action="store_true", help="go back to <image>:backup")
    update_cmd.add_argument("--build", action="store_true", help="build the image first (nox -s build-<service>)")
    logs_cmd = commands.add_parser("export-logs", help="write logs/<service>.log (export-logs.sh)")
    logs_cmd.add_argument("services", nargs="*", metavar="service", help="default: every service")
    logs_cmd.add_argument("--since", help="only lines since then (e.g. 2h, 2026-11-26T09:00:00)")
    logs_cmd.add_argument("--dir", default=str(ROOT / "logs"), help="where to write (default: logs/)")
    args = parser.parse_args(argv)
    unknown = sorted(set(getattr(args, "services", None) or ()) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    try:
        {"deploy": deploy, "update": update, "export-logs": export_logs}[args.command](args)
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
