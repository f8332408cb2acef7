"""``ctllm-images`` (or ``python -m cloudtolocalllm.devkit.images``)::

    ctllm-images dockerd start|stop|status   # a private dockerd (prints DOCKER_HOST)
    ctllm-images base                        # the local base image (mmdebstrap + docker import)
    ctllm-images build|test|publish IMAGE    # what the build-, test- and publish-<image> nox sessions run
    ctllm-images tags IMAGE                  # the image's tags: <version>, then this commit's
    ctllm-images distributions               # JSON: what each image built from wheels installs
    ctllm-images registry [--port 5000]      # Debian's docker-registry on 127.0.0.1, until Ctrl-C

Only publishing needs an image registry.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from cloudtolocalllm.devkit.images.base import LOCAL_BASE, ensure_base
from cloudtolocalllm.devkit.images.build import build, installed_distributions
from cloudtolocalllm.devkit.images.engine import Engine, cache_dir, docker_env
from cloudtolocalllm.devkit.images.publish import local_registry, publish
from cloudtolocalllm.devkit.images.specs import IMAGES, tags
from cloudtolocalllm.devkit.images.test import test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ctllm-images", description="Container images: engine, base, build, test, publish."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dockerd = commands.add_parser("dockerd", help="a private Docker engine under the cache directory")
    dockerd.add_argument("action", choices=["start", "stop", "status"])
    commands.add_parser("base", help=f"import {LOCAL_BASE} (needs DOCKER_HOST or starts a private engine)")
    build_cmd = commands.add_parser("build", help="stage the build context and build one image")
    build_cmd.add_argument("image", choices=sorted(IMAGES))
    build_cmd.add_argument("--pip", default=sys.executable, help="a Python with pip, for pip download")
    test_cmd = commands.add_parser("test", help="run this commit's build of one image and check it")
    test_cmd.add_argument("image", choices=sorted(IMAGES))
    publish_cmd = commands.add_parser("publish", help="push this commit's build of one image to $REGISTRY")
    publish_cmd.add_argument("image", choices=sorted(IMAGES))
    publish_cmd.add_argument(
        "--force", action="store_true", help="publish from a dirty tree, or over a version already published"
    )
    commands.add_parser(
        "distributions", help="JSON: each image built from wheels, its package and the distributions it installs"
    )
    tags_cmd = commands.add_parser("tags", help="print one image's tags, one a line: <version>, then the commit's")
    tags_cmd.add_argument("image", choices=sorted(IMAGES))
    registry_cmd = commands.add_parser("registry", help="Debian's docker-registry on 127.0.0.1 until Ctrl-C")
    registry_cmd.add_argument("--port", type=int, default=5000)
    registry_cmd.add_argument("--storage", type=Path, default=cache_dir() / "registry")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if args.command == "dockerd":
        engine = Engine()
        if args.action == "start":
            started = engine.start()
            print(f"{'started' if started else 'already running'}: export DOCKER_HOST={engine.host}")
        elif args.action == "stop":
            print("stopped" if engine.stop() else "not running")
        else:
            pid = engine.pid()
            print(f"running, pid {pid}, DOCKER_HOST={engine.host}" if pid and engine.ping() else "not running")
            return 0 if pid else 3
        return 0
    if args.command == "build":
        build(args.image, args.pip)
    elif args.command == "distributions":
        found = {
            image: {"package": spec.package, "distributions": installed_distributions(image)}
            for image, spec in IMAGES.items()
            if spec.wheels
        }
        print(json.dumps(found, indent=2))
    elif args.command == "tags":
        print("\n".join(tags(args.image)))
    elif args.command == "test":
        test(args.image)
    elif args.command == "registry":
        with local_registry(args.storage, args.port) as address:
            print(f"images: registry on {address} (storage {args.storage}); Ctrl-C stops it", flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    elif args.command == "publish":
        print(f"images: {args.image} published as {publish(args.image, args.force)}")
    else:
        with docker_env() as env:
            print(ensure_base(env))
    return 0
