"""Release one service: bump its version, date its CHANGELOG, commit, tag, then build, test and publish its image.

    ctllm-release api-backend 1.4.0          # REGISTRY=host:port must be set
    ctllm-release api-backend 1.4.0 --no-publish

Only the service's version file and CHANGELOG change, in one commit tagged ``<service>-v<version>``; then
``nox -s publish-<service>`` builds, tests and pushes that image alone. Nothing of the other services is
touched. An image carries its package's version, so services that share a package share a version number
(static-site and flutter-app: the static server; nginx-proxy and certbot: the edge): releasing the second of
such a pair at the version the first already set skips the bump. See docs/deploy/releases.md.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cloudtolocalllm.devkit.images.publish import registry_address
from cloudtolocalllm.devkit.images.specs import IMAGES
from cloudtolocalllm.devkit.repo import ROOT

VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
VERSION_LINE = re.compile(r'^__version__\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)
# The first section heading: "## Unreleased" or "## 0.2.0 — unreleased" (a planned number), any case.
UNRELEASED = re.compile(r"^## (?:Unreleased|\S+ [—-] unreleased)[ \t]*$", re.MULTILINE | re.IGNORECASE)


class ReleaseError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"release: {message}")


@dataclass(frozen=True)
class Service:
    """Where a service's version and release notes live, relative to the repository root."""

    version_file: Path
    changelog: Path


def services() -> dict[str, Service]:
    """Every image: its package's version file; its changelog (flutter-app's notes are the chat app's)."""
    found: dict[str, Service] = {}
    for image, spec in IMAGES.items():
        package_dir = next(
            path.parent
            for path in sorted((ROOT / "packages").glob("*/pyproject.toml"))
            if re.search(rf'^name = "{re.escape(spec.package)}"$', path.read_text(), re.MULTILINE)
        )
        version_files = [p for p in (package_dir / "src").rglob("version.py") if VERSION_LINE.search(p.read_text())]
        if len(version_files) != 1:
            raise ReleaseError(f"{spec.package}: expected one version.py with __version__, found {version_files}")
        changelog = ROOT / "apps" / "chat" / "CHANGELOG.md" if image == "flutter-app" else package_dir / "CHANGELOG.md"
        found[image] = Service(version_files[0].relative_to(ROOT), changelog.relative_to(ROOT))
    return found


def _git(*args: str, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.rstrip()  # porcelain lines start with a status column that may be a space


def _parse(version: str) -> tuple[int, ...]:
    if not VERSION_RE.match(version):
        raise ReleaseError(f"{version!r} is not a version like 1.4.0 (major.minor.patch)")
    return tuple(int(part) for part in version.split("."))


def bump_version_file(text: str, version: str) -> str:
    return VERSION_LINE.sub(f'__version__ = "{version}"', text, count=1)


def date_changelog(text: str, version: str, day: datetime.date) -> str:
    """The unreleased section becomes ``## <version> — <day>``, under a fresh empty ``## Unreleased``."""
    match, first = UNRELEASED.search(text), re.search(r"^## ", text, re.MULTILINE)
    if match is None or first is None or first.start() != match.start():
        raise ReleaseError("the CHANGELOG's first section is not an Unreleased one: write the release notes first")
    following = re.search(r"^## ", text[match.end() :], re.MULTILINE)
    if not text[match.end() : match.end() + following.start() if following else len(text)].strip():
        raise ReleaseError("the CHANGELOG's Unreleased section is empty: write the release notes first")
    return f"{text[: match.start()]}## Unreleased\n\n## {version} — {day.isoformat()}{text[match.end() :]}"


def release(service: str, version: str, publish: bool, force: bool, day: datetime.date) -> None:
    table = services()
    if service not in table:
        raise ReleaseError(f"unknown service {service!r}; one of {', '.join(sorted(table))}")
    entry = table[service]
    wanted = _parse(version)
    tag = f"{service}-v{version}"
    # Every check before the first change, so a refusal leaves the tree as it was.
    if _git("status", "--porcelain"):
        raise ReleaseError("the tree has uncommitted changes; a release is cut from a clean commit")
    if _git("rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", check=False):
        raise ReleaseError(f"tag {tag} exists already")
    if publish:
        registry_address()  # REGISTRY set and well formed
    nox = shutil.which("nox")
    if nox is None:
        raise ReleaseError("nox not found on PATH (python3 -m pip install --user nox)")

    version_path, changelog_path = ROOT / entry.version_file, ROOT / entry.changelog
    current_match = VERSION_LINE.search(version_path.read_text())
    assert current_match is not None  # services() kept only files that have one
    current = current_match.group(1)
    # The current number is allowed once (no tag yet): a first release, or a sibling's bump (see above).
    if _parse(current) > wanted:
        raise ReleaseError(f"{service} is at {current}; the new version must not be lower")
    # Both new texts first: a refusal (empty release notes) must not leave a half-made release behind.
    updates: dict[Path, str] = {}
    if current != version:
        updates[entry.version_file] = bump_version_file(version_path.read_text(), version)
    if not re.search(rf"^## {re.escape(version)} [—-] ", changelog_path.read_text(), re.MULTILINE):
        updates[entry.changelog] = date_changelog(changelog_path.read_text(), version, day)
    for path, text in updates.items():
        (ROOT / path).write_text(text)
    changed = list(updates)
    touched = _git("status", "--porcelain", "--untracked-files=all").splitlines()
    if sorted(line[3:] for line in touched) != sorted(map(str, changed)):  # this service's two files, nothing else
        raise ReleaseError(f"unexpected changes: {touched}")
    if changed:
        _git("commit", "--quiet", "--message", f"{service} {version}", "--", *map(str, changed))
    _git("tag", "--annotate", "--message", f"{service} {version}", tag)
    print(f"release: {tag} at {_git('rev-parse', '--short=12', 'HEAD')} ({', '.join(map(str, changed)) or 'no bump'})")

    session = f"publish-{service}" if publish else f"test-{service}"
    args = [nox, "--non-interactive", "-s", session, *(["--", "--force"] if force else [])]
    if subprocess.run(args, cwd=ROOT, check=False).returncode != 0:
        raise ReleaseError(
            f"nox -s {session} failed; the commit and {tag} stay local: fix and rerun `nox -s {session}`, or undo "
            f"with `git tag -d {tag}`" + (" and `git revert HEAD`" if changed else "")
        )
    print(f"release: {service} {version} {'published' if publish else 'built and tested (not published)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctllm-release", description=__doc__.split("\n\n")[0])
    parser.add_argument("service", help="an image name: api-backend, static-site, flutter-app, nginx-proxy, certbot")
    parser.add_argument("version", help="the new version, major.minor.patch")
    parser.add_argument("--no-publish", action="store_true", help="build and test only; publish later")
    parser.add_argument("--force", action="store_true", help="publish over a version the registry already has")
    parser.add_argument("--date", type=datetime.date.fromisoformat, default=datetime.date.today())
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    release(args.service, args.version, not args.no_publish, args.force, args.date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
