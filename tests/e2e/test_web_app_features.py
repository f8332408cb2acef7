"""The chat web app's features in Debian's Chromium, on a desktop (1280x800) and a phone (390x844) viewport:
Markdown answers with highlighted code and a Copy button; stop/regenerate/edit; a per-chat system prompt and
parameters; model details from /api/show; image input for a vision model; answer speed; conversations in
IndexedDB (search, rename, delete, export, import); the PWA (manifest, shell-only service worker); dark
mode; keyboard shortcuts; bridges; the `iss` check; tokens kept out of storage; the API keys page (against
the real api-backend, the key then used by the official ollama client). Every main screen is checked with
axe-core (0 serious or critical violations) and photographed into artifacts/ (`nox -s docs-screenshots`
updates the docs' pictures). The budgets are measured and reported."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import httpx
import ollama
import pytest
from playwright.sync_api import Browser, Route, expect

from cloudtolocalllm.devkit.ollama import LLAMA32 as FAKE_MODEL
from cloudtolocalllm.devkit.ollama import contract_double
from cloudtolocalllm.devkit.procs import wait_for

from .web import ARTIFACTS, VIEWPORTS, WebApp, web_app

pytestmark = pytest.mark.slow

# A 1x1 PNG: what the vision test attaches.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

MARKDOWN = (
    "Here is a table:\n\n| tool | speed |\n|:-----|------:|\n| ollama | fast |\n| llama.cpp | faster |\n\n"
    '> a quoted line\n\n- one\n- two\n\n```python\ndef greet(name):\n    return f"hi {name}"\n```\n'
)


@pytest.fixture(params=sorted(VIEWPORTS), ids=sorted(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def ndjson(content: str, done: bool = False) -> bytes:
    line = {"model": FAKE_MODEL, "message": {"role": "assistant", "content": content}, "done": done}
    return json.dumps(line).encode() + b"\n"


def no_serious_violations(web: WebApp, context: str) -> None:
    violations = web.axe(context)
    assert not violations, json.dumps(violations, indent=2)


def open_chats(web: WebApp, viewport: str) -> None:
    """On a phone the conversation list is behind the Chats button."""
    if viewport == "phone" and not web.page.locator("#sidebar").is_visible():
        web.page.get_by_role("button", name="Chats").click()


def set_number(web: WebApp, label: str, value: str) -> None:
    """Set a chat parameter (opening Chat settings if it is closed)."""
    if web.page.locator("#chat-details").is_hidden():
        web.page.get_by_role("button", name="Chat settings").click()
    field = web.page.get_by_label(label)
    field.fill(value)
    field.dispatch_event("change")


def test_markdown_answer_with_highlighted_code_and_copy(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, viewport: str
) -> None:
    chunks = [ndjson(MARKDOWN[i : i + 30]) for i in range(0, len(MARKDOWN), 30)] + [ndjson("", done=True)]
    with contract_double(chat_script=chunks, chunk_gap_s=0.01) as backend:
        with web_app(logs, tmp_path, build, browser, viewport=VIEWPORTS[viewport]) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama", name="laptop")
            web.sign_in()
            page = web.page
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            web.send("Compare the tools in a table, then show a Python greeting.")
            answer = web.answer()
            expect(answer).to_have_attribute("data-state", "done")
            expect(answer.locator("table th")).to_have_text(["tool", "speed"])
            expect(answer.locator("table td.align-right").first).to_have_text("fast")
            expect(answer.locator("blockquote")).to_have_text("a quoted line")
            expect(answer.locator("ul > li")).to_have_count(2)
            code = answer.locator("pre code.language-python")
            expect(code.locator(".hljs-keyword").first).to_have_text("def")
            expect(code.locator(".hljs-string")).to_have_count(1)
            answer.get_by_role("button", name="Copy python code").click()
            expect(answer.locator("button.copy")).to_contain_text("Copied")
            assert page.evaluate("navigator.clipboard.readText()") == 'def greet(name):\n    return f"hi {name}"\n'
            assert not [c for c in web.console if "Content Security Policy" in c], web.console
            # No eval_count in this backend's final chunk: the page measures the speed itself.
            pieces = len(chunks) - 1
            expect(answer.locator(".stats")).to_contain_text(f"{pieces} tokens")
            expect(answer.locator(".stats")).to_contain_text("tokens/s")
            no_serious_violations(web, f"chat ({viewport})")
            web.screenshot(f"chat-{viewport}.png")


def test_chat_controls_settings_details_regenerate_edit_and_speed(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, viewport: str
) -> None:
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser, viewport=VIEWPORTS[viewport]) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            # Model details from /api/show.
            expect(page.locator("#model-info")).to_have_text(
                "family llama · 1.2B parameters · Q8_0 · context 128K tokens"
            )
            expect(page.get_by_role("button", name="Attach image")).to_be_hidden()  # not a vision model

            # Per-chat system prompt and parameters.
            page.get_by_role("button", name="Chat settings").click()
            page.get_by_label("System prompt").fill("Answer in French.")
            page.get_by_label("System prompt").dispatch_event("change")
            set_number(web, "Temperature", "0.3")
            set_number(web, "Context length (num_ctx)", "4096")
            set_number(web, "Max tokens (num_predict)", "6")
            no_serious_violations(web, f"chat settings ({viewport})")
            web.screenshot(f"chat-settings-{viewport}.png")

            web.send("count for me")
            expect(web.answer()).to_have_attribute("data-state", "done")
            expect(web.answer().locator(".body")).to_have_text("t0 t1 t2 t3 t4 t5")
            body = backend.event_data("chat-body")[-1]
            assert body["options"] == {"temperature": 0.3, "num_ctx": 4096, "num_predict": 6}
            assert body["messages"] == [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "count for me"},
            ]
            # Speed under the answer: from the final chunk's eval_count / eval_duration, and the first token.
            stats = web.answer().locator(".stats")
            expect(stats).to_contain_text("tokens/s")
            expect(stats).to_contain_text("first token")
            expect(stats).to_contain_text("6 tokens")

            # Regenerate: the last answer is asked for again and replaced.
            web.answer().get_by_role("button", name="Regenerate this answer").click()
            wait_for(lambda: len(backend.event_data("chat-body")) == 2, 10, "the regenerated request")
            expect(web.answer()).to_have_attribute("data-state", "done")
            expect(page.locator("#messages li.msg.assistant")).to_have_count(1)
            assert backend.event_data("chat-body")[-1]["messages"] == body["messages"]

            # Edit and resend: the edited message replaces it and everything after.
            page.locator("#messages li.msg.user").get_by_role("button", name="Edit and resend this message").click()
            page.get_by_label("Edit your message").fill("count again")
            page.get_by_label("Edit your message").press("Enter")
            wait_for(lambda: len(backend.event_data("chat-body")) == 3, 10, "the edited request")
            expect(web.answer()).to_have_attribute("data-state", "done")
            expect(page.locator("#messages li.msg")).to_have_count(2)
            expect(page.locator("#messages li.msg.user .body")).to_have_text("count again")
            assert backend.event_data("chat-body")[-1]["messages"][-1] == {"role": "user", "content": "count again"}

            # The settings are the chat's: they come back with it after a reload.
            page.reload()
            expect(page.locator("#messages li.msg.user .body")).to_have_text("count again")
            expect(page.get_by_label("System prompt")).to_have_value("Answer in French.")
            expect(page.get_by_label("Max tokens (num_predict)")).to_have_value("6")


def test_image_input_for_a_vision_model(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, viewport: str
) -> None:
    with contract_double(capabilities=("completion", "vision")) as backend:
        with web_app(logs, tmp_path, build, browser, viewport=VIEWPORTS[viewport]) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            expect(page.locator("#model-info")).to_contain_text("sees images")
            expect(page.get_by_role("button", name="Attach image")).to_be_visible()
            page.locator("#attach-file").set_input_files(
                {"name": "pixel.png", "mimeType": "image/png", "buffer": PIXEL}
            )
            expect(page.get_by_role("img", name="Attached image 1")).to_be_visible()
            set_number(web, "Max tokens (num_predict)", "3")
            web.send("What is in this picture?")
            expect(web.answer()).to_have_attribute("data-state", "done")
            sent = backend.event_data("chat-body")[-1]["messages"][-1]
            assert sent == {
                "role": "user",
                "content": "What is in this picture?",
                "images": [base64.b64encode(PIXEL).decode()],
            }
            expect(page.get_by_role("img", name="Image 1 sent with this message")).to_be_visible()
            expect(page.locator("#attachments")).to_be_hidden()


def test_conversations_search_rename_export_import_delete(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, viewport: str
) -> None:
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser, viewport=VIEWPORTS[viewport]) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            set_number(web, "Max tokens (num_predict)", "2")
            web.send("apples and pears")
            expect(web.answer()).to_have_attribute("data-state", "done")
            page.keyboard.press("Control+Shift+O") if viewport == "desktop" else None
            if viewport == "phone":
                open_chats(web, viewport)
                page.get_by_role("button", name="New chat").click()
            set_number(web, "Max tokens (num_predict)", "2")
            web.send("plums only")
            expect(web.answer()).to_have_attribute("data-state", "done")

            open_chats(web, viewport)
            titles = page.locator("#conversations button.open")
            expect(titles).to_have_text(["plums only", "apples and pears"])
            expect(page.locator("#stored-note")).to_contain_text("Stored only in this browser")
            # Search looks in titles and messages.
            page.get_by_label("Search conversations").fill("pear")
            expect(titles).to_have_text(["apples and pears"])
            page.get_by_label("Search conversations").fill("t1")  # in both answers
            expect(titles).to_have_count(2)
            page.get_by_label("Search conversations").fill("nothing like this")
            expect(page.locator("#no-results")).to_be_visible()
            page.get_by_label("Search conversations").fill("")

            # Rename.
            page.get_by_label("Actions for “apples and pears”").click()
            no_serious_violations(web, f"conversation list ({viewport})")
            web.screenshot(f"conversations-{viewport}.png")
            page.get_by_role("button", name="Rename “apples and pears”").click()
            page.get_by_label("New name").fill("Fruit")
            page.get_by_label("New name").press("Enter")
            expect(titles).to_have_text(["plums only", "Fruit"])

            # Export as Markdown and JSON (downloads made in the browser, from IndexedDB).
            page.get_by_label("Actions for “Fruit”").click()
            with page.expect_download() as markdown_download:
                page.get_by_role("button", name="Export as Markdown “Fruit”").click()
            markdown = Path(markdown_download.value.path()).read_text()
            assert markdown_download.value.suggested_filename == "Fruit.md"
            assert markdown.startswith("# Fruit\n") and "## You\n\napples and pears" in markdown
            page.get_by_label("Actions for “Fruit”").click()
            with page.expect_download() as json_download:
                page.get_by_role("button", name="Export as JSON “Fruit”").click()
            exported = json.loads(Path(json_download.value.path()).read_text())
            assert exported["format"] == "cloudtolocalllm-chat"
            [conversation] = exported["conversations"]
            assert conversation["title"] == "Fruit" and conversation["settings"] == {"num_predict": 2}
            assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]

            # Delete (confirmed), then import the export back.
            web.accept_dialogs = True
            page.get_by_label("Actions for “Fruit”").click()
            page.get_by_role("button", name="Delete “Fruit”").click()
            expect(titles).to_have_text(["plums only"])
            assert "stored only in this browser" in web.dialogs[-1]
            page.locator("#import-file").set_input_files(
                {"name": "Fruit.json", "mimeType": "application/json", "buffer": json.dumps(exported).encode()}
            )
            expect(page.locator("#banner")).to_contain_text("Imported 1 conversation")
            expect(titles).to_have_text(["plums only", "Fruit"])
            page.locator("#import-file").set_input_files(
                {"name": "bad.json", "mimeType": "application/json", "buffer": b'{"hello": 1}'}
            )
            expect(page.locator("#banner")).to_contain_text("not a CloudToLocalLLM chat export")

            # Kept in IndexedDB: a reload (and a new tab's sign-in) sees them.
            page.reload()
            open_chats(web, viewport)
            expect(titles).to_have_text(["plums only", "Fruit"])
            stored = page.evaluate(
                """() => new Promise((resolve) => {
                  const open = indexedDB.open("ctllm-chat");
                  open.onsuccess = () => {
                    const get = open.result.transaction("conversations").objectStore("conversations").getAll();
                    get.onsuccess = () => resolve(get.result.map((c) => [c.owner, c.title]));
                  };
                })"""
            )
            assert sorted(stored) == [["dev-user", "Fruit"], ["dev-user", "plums only"]]


def test_conversations_saved_by_the_previous_version_open_and_continue(
    logs: Path, tmp_path: Path, build: Path, browser: Browser
) -> None:
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            # A record exactly as version 0.1 of the app wrote it (same database; no settings, no stats).
            page.evaluate(
                """() => new Promise((resolve, reject) => {
                  const open = indexedDB.open("ctllm-chat", 1);
                  open.onsuccess = () => {
                    const tx = open.result.transaction("conversations", "readwrite");
                    tx.objectStore("conversations").put({
                      id: "old-1", owner: "dev-user", title: "From the old app", model: "llama3.2:1b",
                      updated: 1, messages: [
                        { role: "user", content: "hi" },
                        { role: "assistant", content: "**hello**", state: "done" },
                      ],
                    });
                    tx.oncomplete = () => resolve();
                    tx.onerror = () => reject(tx.error);
                  };
                })"""
            )
            page.reload()
            page.locator("#conversations button.open", has_text="From the old app").click()
            expect(page.locator("#messages li.msg.assistant strong")).to_have_text("hello")
            set_number(web, "Max tokens (num_predict)", "2")
            web.send("and again")
            expect(web.answer()).to_have_attribute("data-state", "done")
            sent = backend.event_data("chat-body")[-1]
            assert [m["content"] for m in sent["messages"]] == ["hi", "**hello**", "and again"]


def test_bridges_view_and_get_started_link(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, viewport: str
) -> None:
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser, viewport=VIEWPORTS[viewport]) as web:
            web.sign_in()
            page = web.page
            expect(page.locator("#bridge-pill")).to_have_attribute("data-state", "none")
            link = page.locator("#banner").get_by_role("link", name="Get started")
            expect(link).to_have_attribute("href", web.url + "/docs/get-started/")
            page.get_by_role("link", name="Bridges").click()
            empty = page.locator("#bridges-empty")
            expect(empty).to_contain_text("No bridge is connected")
            api_origin = json.loads(page.request.get(web.url + "/config.json").text())["apiBase"]
            expect(page.locator("#bridge-commands")).to_have_text(
                f"cloudtolocalllm-bridge login {api_origin}\ncloudtolocalllm-bridge run"
            )
            expect(empty.get_by_role("link", name="Read “Get started”")).to_have_attribute(
                "href", web.url + "/docs/get-started/"
            )
            no_serious_violations(web, f"bridges, none connected ({viewport})")
            web.screenshot(f"bridges-none-{viewport}.png")

            web.stack.bridge(backend.url, user="dev-user", kind="ollama", name="desktop-pc")
            card = page.locator("#bridges li.bridge")
            expect(card).to_have_count(1, timeout=15_000)
            expect(card.locator("h3")).to_have_text("desktop-pc")
            expect(card).to_have_attribute("data-state", "ok")
            expect(card).to_contain_text("its ollama answers")
            expect(card).to_contain_text(FAKE_MODEL)
            expect(empty).to_be_hidden()
            expect(page.locator("#banner")).to_be_hidden()
            no_serious_violations(web, f"bridges ({viewport})")
            web.screenshot(f"bridges-{viewport}.png")


def test_api_keys_settings_page_creates_a_key_the_ollama_client_uses_then_revokes_it(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, viewport: str
) -> None:
    """The Settings page against the real api-backend: the key it shows once works with the official ollama
    client (scope inference), is refused for model management (403 naming the scope), and is 401 once revoked."""
    with contract_double() as backend, web_app(logs, tmp_path, build, browser, viewport=VIEWPORTS[viewport]) as web:
        web.stack.bridge(backend.url, user="dev-user", kind="ollama", name="laptop")
        web.sign_in()
        page = web.page
        page.get_by_role("link", name="Settings").click()
        expect(page.locator("#keys-empty")).to_be_visible()
        page.get_by_label("Name").fill("laptop scripts")
        page.get_by_role("button", name="Create key").click()
        shown = page.locator("#new-key-value")
        expect(shown).to_have_text(re.compile(r"^ctllm_[0-9A-Za-z]{49}$"))
        key = shown.inner_text()
        page.get_by_role("button", name="Copy", exact=True).click()
        assert page.evaluate("navigator.clipboard.readText()") == key
        row = page.locator("#keys tr")
        expect(row).to_have_count(1)
        expect(row.locator("td").nth(0)).to_have_text("laptop scripts")
        listed = httpx.get(web.stack.url + "/api/keys", headers=web.stack.headers("dev-user"), timeout=5).json()
        (record,) = listed["keys"]
        assert key.startswith(record["prefix"])
        expect(row.locator("td").nth(1)).to_have_text(record["prefix"] + "…")
        expect(row.locator("td").nth(2)).to_have_text("inference")
        no_serious_violations(web, f"settings ({viewport})")
        web.screenshot(f"settings-keys-{viewport}.png")
        page.get_by_role("button", name="Done").click()
        expect(page.locator("#new-key")).to_be_hidden()
        assert key not in page.locator("body").inner_text(), "the key is shown only once"

        with ollama.Client(host=web.stack.url + "/api/ollama", headers={"Authorization": f"Bearer {key}"}) as client:
            assert FAKE_MODEL in [m.model for m in client.list().models]
            with pytest.raises(ollama.ResponseError) as wrong_scope:
                client.delete(FAKE_MODEL)
            assert wrong_scope.value.status_code == 403
            assert "models:write" in wrong_scope.value.error

            web.accept_dialogs = True
            page.get_by_role("button", name="Revoke the key “laptop scripts”").click()
            expect(page.locator("#keys-empty")).to_be_visible()
            with pytest.raises(ollama.ResponseError) as revoked:
                client.list()
            assert revoked.value.status_code == 401


def test_sign_in_checks_iss_and_keeps_tokens_out_of_storage(
    logs: Path, tmp_path: Path, build: Path, browser: Browser
) -> None:
    with web_app(logs, tmp_path, build, browser) as web:
        page = web.page
        page.goto(web.url)
        no_serious_violations(web, "signed out")
        web.screenshot("signed-out-desktop.png")

        def tamper(iss: str | None) -> None:
            def rewrite(route: Route) -> None:
                response = route.fetch(max_redirects=0)
                location = response.headers["location"]
                assert "iss=" in location, "the dev issuer sends iss (RFC 9207)"
                base, query = location.split("?", 1)
                params = [p for p in query.split("&") if not p.startswith("iss=")]
                if iss is not None:
                    params.append("iss=" + iss)
                route.fulfill(status=303, headers={**response.headers, "location": base + "?" + "&".join(params)})

            page.route("**/dev-issuer/authorize", rewrite)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Sign in").click()  # the dev issuer's page
            page.unroute("**/dev-issuer/authorize")

        tamper("https%3A%2F%2Fevil.example%2F")
        expect(page.locator("#banner")).to_contain_text("came from another issuer")
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
        tamper(None)
        expect(page.locator("#banner")).to_contain_text("did not say which issuer")
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()

        web.sign_in()
        storage = page.evaluate("() => ({ local: { ...localStorage }, session: { ...sessionStorage } })")
        assert list(storage["session"]) == ["ctllm.refresh"], storage
        values = [*storage["local"].values(), *storage["session"].values()]
        assert not [v for v in values if v.startswith("eyJ")], "no access or ID token (JWT) at rest"
        # A reload renews the session silently with the refresh token (rotated on use).
        before = storage["session"]["ctllm.refresh"]
        page.reload()
        expect(page.locator("#user-name")).to_have_text("dev-user")
        assert page.evaluate("sessionStorage.getItem('ctllm.refresh')") != before


def test_pwa_dark_mode_shortcuts_and_budgets(logs: Path, tmp_path: Path, build: Path, browser: Browser) -> None:
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser) as web:
            page = web.page
            # First render on loopback, a cold load (no service worker yet, nothing cached).
            started = time.monotonic()
            page.goto(web.url)
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            ready_s = time.monotonic() - started
            paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
            transfer = page.evaluate(
                """() => performance.getEntriesByType("resource").concat(performance.getEntriesByType("navigation"))
                     .reduce((sum, e) => sum + e.encodedBodySize, 0)"""
            )
            report = json.loads((build / "build-report.json").read_text())
            budgets = {
                "first_load_gzip_bytes": report["first_load_gzip_bytes"],
                "app_shell_gzip_bytes": report["app_shell_gzip_bytes"],
                "first_load_transferred_bytes": transfer,
                "first_contentful_paint_ms": round(paint) if paint is not None else None,
                "signed_out_screen_ready_ms": round(ready_s * 1000),
            }
            assert report["app_shell_gzip_bytes"] <= 150 * 1024
            assert 0 < transfer <= 150 * 1024, "the static server sends the .gz siblings"

            # The manifest: installable (name, start URL, standalone, 192 and 512 icons, a maskable one).
            manifest = page.evaluate(
                "async () => await (await fetch(document.querySelector('link[rel=manifest]').href)).json()"
            )
            assert manifest["display"] == "standalone" and manifest["start_url"] == "/"
            sizes = {(i["sizes"], i.get("purpose", "any")) for i in manifest["icons"]}
            assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= sizes
            for icon in manifest["icons"]:
                assert page.request.get(f"{web.url}/{icon['src']}").ok
            # Chromium's own verdict: nothing about the app stops installing it (a test's browser context is
            # incognito, which Chromium always reports).
            cdp = page.context.new_cdp_session(page)
            errors = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
            assert [e["errorId"] for e in errors if e["errorId"] != "in-incognito"] == []

            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            page.wait_for_function("navigator.serviceWorker.controller !== null || navigator.serviceWorker.ready")
            page.evaluate("navigator.serviceWorker.ready")
            set_number(web, "Max tokens (num_predict)", "3")
            page.get_by_role("button", name="Chat settings").click()
            web.send("hello")
            expect(web.answer()).to_have_attribute("data-state", "done")
            # The service worker's cache holds the app shell only: no API answer, no config, no token.
            cached: list[str] = page.evaluate(
                """async () => {
                  const urls = [];
                  for (const name of await caches.keys()) {
                    for (const request of await (await caches.open(name)).keys()) urls.push(request.url);
                  }
                  return urls;
                }"""
            )
            paths = sorted(u.removeprefix(web.url) for u in cached)
            assert "/" in paths and any(p.startswith("/app.") and p.endswith(".js") for p in paths), paths
            assert not [p for p in paths if "/api/" in p or "config.json" in p or "dev-issuer" in p], paths
            # Offline, the shell still starts (from the cache) and says what is wrong.
            page.context.set_offline(True)
            page.reload()
            expect(page.locator("#banner")).to_be_visible()
            expect(page.locator("h1.brand")).to_have_text("CloudToLocalLLM")
            page.context.set_offline(False)
            started = time.monotonic()
            page.reload()  # signed in: the shell from the service worker, then a silent token renewal
            expect(page.locator("#user-name")).to_have_text("dev-user")
            expect(page.locator("#messages li.msg.assistant")).to_have_count(1)
            budgets["signed_in_reload_to_chat_ms"] = round((time.monotonic() - started) * 1000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "budgets.json").write_text(json.dumps(budgets, indent=2) + "\n")
            print("web app budgets:", json.dumps(budgets))

            # Dark mode follows the system.
            light = page.evaluate("getComputedStyle(document.body).backgroundColor")
            page.emulate_media(color_scheme="dark")
            dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert (light, dark) == ("rgb(247, 247, 248)", "rgb(21, 23, 28)")
            no_serious_violations(web, "chat, dark")
            web.screenshot("chat-dark-desktop.png")
            page.emulate_media(color_scheme="light")

            # Desktop keyboard shortcuts.
            page.keyboard.press("Control+k")
            expect(page.get_by_label("Search conversations")).to_be_focused()
            page.keyboard.press("Shift+Escape")
            expect(page.get_by_label("Message", exact=True)).to_be_focused()
            page.keyboard.press("Control+Shift+Enter")  # regenerate
            wait_for(lambda: len(backend.event_data("chat-body")) == 2, 10, "the regenerated request")
            expect(web.answer()).to_have_attribute("data-state", "done")
            page.keyboard.press("Control+Shift+S")
            expect(page.get_by_label("System prompt")).to_be_focused()
            page.keyboard.press("Control+Shift+O")
            expect(page.locator("#messages li")).to_have_count(0)
            expect(page.get_by_label("Message", exact=True)).to_be_focused()
