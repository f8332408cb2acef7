"""The chat web app as the browser sees it: the built app on the real static server, api-backend with the
dev issuer's browser sign-in, and Debian's Chromium driven by Playwright.

Dev topology (documented in docs/web-app.md): the app and the API are two origins here, so config.json
names the API origin, the app's CSP ``connect-src`` allows it, and api-backend answers CORS for the app's
origin (``DEV_REDIRECT_URIS``). Behind the edge in production they share one origin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Playwright, expect

from cloudtolocalllm.core import DEFAULT_CSP
from cloudtolocalllm.devkit.procs import BIN, REPO, Proc, dev_auth_env, free_port, start_api_backend, wait_for

from .conftest import AUDIENCE, FAST_TIMINGS, Stack

CLIENT_ID = "cloudtolocalllm-web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "artifacts" / "web-app"
DOCS_IMAGES = REPO / "docs" / "img" / "web-app"  # screenshots the docs show (docs/web-app.md)
# Only `nox -s docs-screenshots` rewrites the docs' pictures: a test run never edits tracked files (a PNG
# differs byte for byte from run to run, and publishing refuses a dirty tree).
UPDATE_DOCS_IMAGES = os.environ.get("CTLLM_UPDATE_DOCS_SCREENSHOTS") == "1"
AXE = REPO / "apps" / "chat" / "node_modules" / "axe-core" / "axe.min.js"  # installed by the app build (npm ci)
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}


def build_app(out: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_chat_app.py"), str(out)], check=True, stdout=subprocess.DEVNULL
    )
    report: dict[str, Any] = json.loads((out / "build-report.json").read_text())
    return report


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@dataclass
class WebApp:
    """The served app, the stack behind it, and what the page did that it should not have."""

    stack: Stack
    url: str
    static: Proc
    page: Page
    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    accept_dialogs: bool = False  # confirm() answers: dismissed (Cancel) unless a test says otherwise

    def sign_in(self, user: str = "dev-user") -> None:
        page = self.page
        page.goto(self.url)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/dev-issuer/authorize**")
        field_ = page.get_by_label("User id")
        assert field_.input_value() == "dev-user"
        field_.fill(user)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        expect(page.locator("#user-name")).to_have_text(user)

    def answer(self) -> Any:
        return self.page.locator("#messages li.msg.assistant").last

    def send(self, text: str) -> None:
        self.page.get_by_label("Message", exact=True).fill(text)
        self.page.get_by_label("Message", exact=True).press("Enter")

    def axe(self, context: str = "main") -> list[dict[str, Any]]:
        """axe-core (from the app's locked npm packages) on the page: the serious and critical violations.
        Injected through the DevTools protocol, which the page's CSP does not govern (the app's CSP stays)."""
        page = self.page
        if not page.evaluate("typeof window.axe === 'object'"):
            page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
        result: dict[str, Any] = page.evaluate(
            """async () => await axe.run(document, {
                 runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
               })"""
        )
        serious = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
        return [
            {"context": context, "id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in serious
        ]

    def screenshot(self, name: str, *, docs: bool = True) -> Path:
        """A screenshot of the viewport into artifacts/, and into docs/img/web-app/ (the docs show it) when
        the docs' pictures are being updated."""
        folder = DOCS_IMAGES if docs and UPDATE_DOCS_IMAGES else ARTIFACTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        self.page.screenshot(path=str(path), animations="disabled", caret="hide")
        return path


def start_static(logs: Path, root: Path, api_origin: str, port: int) -> Proc:
    csp = DEFAULT_CSP.replace("connect-src 'self'", f"connect-src 'self' {api_origin}")
    proc = Proc(
        f"flutter-app-{port}",
        [str(BIN / "cloudtolocalllm-static-site")],
        {
            "STATIC_ROOT": str(root),
            "STATIC_PORT": str(port),
            "STATIC_SPA": "true",
            "STATIC_SERVICE_NAME": "flutter-app",
            "STATIC_CSP": csp,
        },
        logs,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not proc.alive():
            raise AssertionError(f"static server exited: {proc.log_text()[-2000:]}")
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 30, "the static server")
    return proc


@contextmanager
def web_app(
    logs: Path, tmp: Path, build: Path, browser: Browser, *, viewport: tuple[int, int] = (1280, 800), **env: str
) -> Iterator[WebApp]:
    """Start api-backend (dev issuer + code flow) and the static server with this test's config.json."""
    api_port, app_port = free_port(), free_port()
    api_url, app_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{app_port}"
    issuer_url = api_url + "/dev-issuer"
    auth_env, issuer = dev_auth_env(tmp / "issuer", issuer_url, AUDIENCE)
    full_env = {**auth_env, "DEV_REDIRECT_URIS": app_url + "/", **FAST_TIMINGS, **env}
    root = tmp / "app"
    shutil.copytree(build, root)
    config = {
        "issuer": issuer_url,
        "clientId": CLIENT_ID,
        "audience": AUDIENCE,
        "apiBase": api_url,
        "statusIntervalMs": 500,
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "config.json.gz").unlink()
    api, url = start_api_backend(logs, full_env, port=api_port)
    stack = Stack(logs=logs, root=tmp, env=full_env, issuer=issuer, api=api, url=url)
    static: Proc | None = None
    context = None
    try:
        static = start_static(logs, root, api_url, app_port)
        context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            accept_downloads=True,
            has_touch=viewport[0] < 700,
            is_mobile=viewport[0] < 700,
            device_scale_factor=1,
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url)
        page = context.new_page()
        page.set_default_timeout(20_000)
        running = WebApp(stack=stack, url=app_url, static=static, page=page)

        def on_dialog(dialog: Dialog) -> None:
            running.dialogs.append(dialog.message)
            if running.accept_dialogs:
                dialog.accept()
            else:
                dialog.dismiss()

        def on_console(message: ConsoleMessage) -> None:
            running.console.append(f"{message.type}: {message.text}")

        page.on("dialog", on_dialog)
        page.on("console", on_console)
        yield running
    finally:
        if context is not None:
            context.close()
        for proc in stack.procs:
            proc.stop()
        if static is not None:
            static.stop()
        stack.api.stop()
