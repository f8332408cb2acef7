"""The chat web app in Debian's Chromium against the real services: dev-issuer sign-in (code + PKCE), the real
small model streamed token by token, stop, reload, the offline banner, hostile model output, a UTF-8
character split across network chunks, session renewal, and screenshots (desktop and phone)."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from cloudtolocalllm.devkit.ollama import LLAMA32 as FAKE_MODEL
from cloudtolocalllm.devkit.ollama import contract_double
from cloudtolocalllm.devkit.procs import wait_for

from .web import ARTIFACTS, WebApp, web_app

pytestmark = pytest.mark.slow

REAL_MODEL = "smollm2:135m"

RECORD_GROWTH = """() => {
  window.__lengths = [];
  const list = document.getElementById("messages");
  new MutationObserver(() => {
    const last = list.querySelector("li.msg.assistant:last-of-type .body");
    const state = list.querySelector("li.msg.assistant:last-of-type")?.dataset.state;
    if (last) window.__lengths.push([performance.now(), last.textContent.length, state]);
  }).observe(list, { subtree: true, childList: true, characterData: true, attributes: true });
}"""


@pytest.fixture
def web(logs: Path, tmp_path: Path, build: Path, browser: Browser) -> Iterator[WebApp]:
    with web_app(logs, tmp_path, build, browser) as running:
        yield running


def ndjson(content: str, done: bool = False) -> bytes:
    line = {"model": FAKE_MODEL, "message": {"role": "assistant", "content": content}, "done": done}
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_sign_in_stream_reload_and_offline_banner_with_the_real_model(web: WebApp, local_model: str) -> None:
    bridge = web.stack.bridge(local_model, user="dev-user", kind="openai", name="laptop")
    web.sign_in()
    page = web.page
    expect(page.locator("#bridge-pill")).to_have_attribute("data-state", "connected")
    expect(page.locator("#model option", has_text=REAL_MODEL)).to_have_count(1)
    page.get_by_label("Model", exact=True).select_option(REAL_MODEL)

    page.evaluate(RECORD_GROWTH)
    web.send("Write three sentences about the sea.")
    expect(web.answer()).to_have_attribute("data-state", "done", timeout=60_000)
    text = web.answer().locator(".body").inner_text()
    assert len(text) > 20
    # Answer speed under the answer (from the final chunk, else measured by the page), model details.
    expect(web.answer().locator(".stats")).to_contain_text("tokens/s")
    expect(web.answer().locator(".stats")).to_contain_text("first token")
    expect(page.locator("#model-info")).not_to_be_empty()
    lengths: list[list[Any]] = page.evaluate("window.__lengths")
    growing = [n for _, n, state in lengths if state == "streaming" and n > 0]
    # Token by token: the answer was seen at many increasing lengths before it was done.
    assert len(set(growing)) >= 5, lengths
    # It only grows, but for Markdown syntax shown as text until its closing half arrives (e.g. `**`).
    drops = [a - b for a, b in itertools.pairwise(growing) if b < a]
    assert all(d <= 3 for d in drops) and growing[-1] > growing[0], growing
    screenshot(page, "chat-desktop.png")

    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "chat-phone.png")
    page.set_viewport_size({"width": 1280, "height": 800})

    page.reload()
    expect(page.locator("#user-name")).to_have_text("dev-user")
    expect(page.locator("#conversations button.open[aria-current=true]")).to_have_text(
        "Write three sentences about the sea."
    )
    expect(web.answer()).to_have_attribute("data-state", "done")
    assert web.answer().locator(".body").inner_text() == text

    bridge.stop()
    expect(page.locator("#bridge-pill")).to_have_attribute("data-state", "none", timeout=15_000)
    expect(page.locator("#banner")).to_contain_text("No bridge is connected")
    expect(page.locator("#banner code")).to_have_text("cloudtolocalllm-bridge run")
    screenshot(page, "offline-banner.png")
    assert not web.dialogs


def test_stop_cancels_the_backend_generation(web: WebApp) -> None:
    with contract_double() as backend:  # 200 tokens, 50 ms apart: ten seconds unless stopped
        web.stack.bridge(backend.url, user="dev-user", kind="ollama")
        web.sign_in()
        page = web.page
        expect(page.locator("#model")).to_have_value(FAKE_MODEL)
        web.send("count")
        body = web.answer().locator(".body")
        expect(body).to_contain_text("t5 ")
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        page.keyboard.press("Escape")
        expect(web.answer()).to_have_attribute("data-state", "stopped")
        stopped_at = time.monotonic()
        closed = wait_for(lambda: backend.event_times("chat-closed"), 5, "the backend to see the cancel")
        assert closed[0] - stopped_at < 2
        assert not backend.event_times("chat-done")
        wait_for(lambda: web.stack.metric("relay_streams_active") == 0, 5, "no stream left in the relay")
        assert all(b["streams_in_flight"] == 0 for b in web.stack.status("dev-user"))
        frozen = body.inner_text()
        time.sleep(0.5)
        assert body.inner_text() == frozen, "the answer kept growing after stop"
        expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
        expect(web.answer().locator(".note")).to_have_text("Stopped.")


HOSTILE = (
    "Here you go <script>window.__pwned = 1; alert('script')</script>\n\n"
    '<img src=x onerror="window.__pwned = 2; alert(\'img\')"> and <a href="javascript:alert(3)">html link</a>\n\n'
    "- [markdown js link](javascript:alert(4))\n"
    "- [a real link](https://example.com/docs)\n"
    "- **bold** and `<b>code</b>`\n\n"
    "```html\n<script>alert(5)</script>\n```\n"
)


def test_hostile_model_output_runs_no_code_and_is_shown_as_text(
    logs: Path, tmp_path: Path, build: Path, browser: Browser
) -> None:
    chunks = [ndjson(HOSTILE[i : i + 40]) for i in range(0, len(HOSTILE), 40)] + [ndjson("", done=True)]
    with contract_double(chat_script=chunks, chunk_gap_s=0.02) as backend:
        with web_app(logs, tmp_path, build, browser) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            web.send("show me markup")
            answer = web.answer()
            expect(answer).to_have_attribute("data-state", "done")
            page.wait_for_timeout(300)
            assert page.evaluate("window.__pwned") is None
            assert not web.dialogs, web.dialogs
            assert not [c for c in web.console if "pwned" in c or "Content Security Policy" in c], web.console
            assert answer.locator("script, img, [onerror]").count() == 0
            body = answer.locator(".body")
            expect(body).to_contain_text("<script>window.__pwned = 1; alert('script')</script>")
            expect(body).to_contain_text('<img src=x onerror="window.__pwned = 2')
            links = answer.locator("a")
            expect(links).to_have_count(1)
            expect(links).to_have_attribute("href", "https://example.com/docs")
            expect(links).to_have_attribute("rel", "noopener noreferrer nofollow")
            expect(answer.locator("li", has_text="markdown js link")).to_contain_text("javascript:alert(4)")
            expect(answer.locator("strong")).to_have_text("bold")
            expect(answer.locator("li code")).to_have_text("<b>code</b>")
            expect(answer.locator("pre code")).to_have_text("<script>alert(5)</script>")
            # Clicking the text of the javascript: link does nothing either.
            answer.locator("li", has_text="markdown js link").click()
            assert page.evaluate("window.__pwned") is None and not web.dialogs


def test_utf8_character_split_across_network_chunks(logs: Path, tmp_path: Path, build: Path, browser: Browser) -> None:
    line = ndjson("Grüße €😀 done")
    # Split inside "ü" (2 bytes), inside "€" (3 bytes) and inside "😀" (4 bytes).
    cuts = [line.index("ü".encode()) + 1, line.index("€".encode()) + 2, line.index("😀".encode()) + 3]
    parts = [line[: cuts[0]], line[cuts[0] : cuts[1]], line[cuts[1] : cuts[2]], line[cuts[2] :]]
    with contract_double(chat_script=[*parts, ndjson("", done=True)], chunk_gap_s=0.2) as backend:
        with web_app(logs, tmp_path, build, browser) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            # Record the chunks as the browser receives them, to prove the split reached it.
            page.evaluate(
                """() => {
                  window.__chunks = [];
                  const original = window.fetch;
                  window.fetch = async (...args) => {
                    const response = await original(...args);
                    if (!String(args[0]).endsWith("/api/chat")) return response;
                    const [mine, theirs] = response.body.tee();
                    (async () => {
                      const reader = mine.getReader();
                      for (;;) {
                        const { value, done } = await reader.read();
                        if (done) break;
                        window.__chunks.push(Array.from(value));
                      }
                    })();
                    return new Response(theirs, { status: response.status, headers: response.headers });
                  };
                }"""
            )
            web.send("greet")
            expect(web.answer()).to_have_attribute("data-state", "done")
            expect(web.answer().locator(".body")).to_have_text("Grüße €😀 done")
            chunks: list[list[int]] = page.evaluate("window.__chunks")
            received = b"".join(bytes(c) for c in chunks)
            assert received.startswith(line)
            boundaries = {sum(len(c) for c in chunks[: i + 1]) for i in range(len(chunks))}
            assert set(cuts) & boundaries, f"no multi-byte split reached the browser: {[len(c) for c in chunks]}"


def test_error_messages_for_401_429_and_503(web: WebApp) -> None:
    web.sign_in()
    page = web.page
    # A real 503 from the relay: no bridge is connected when the user sends.
    page.evaluate(
        """() => {
          const select = document.getElementById("model");
          select.append(new Option("m", "m"));
          select.value = "m";
          document.getElementById("send").disabled = false;
        }"""
    )
    web.send("anyone there?")
    expect(web.answer()).to_have_attribute("data-state", "error")
    expect(web.answer().locator(".note")).to_contain_text("Start the bridge")

    # 429 and 401 as api-backend sends them (Ollama-shaped JSON), through the page's network layer.
    def answer_with(status: int, error: str, headers: dict[str, str]) -> None:
        def fulfil(route: Route) -> None:
            origin = route.request.headers.get("origin", "")
            cors = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": "Retry-After",
                "Access-Control-Allow-Headers": "authorization, content-type",
            }
            if route.request.method == "OPTIONS":
                route.fulfill(status=204, headers=cors)
            else:
                route.fulfill(status=status, json={"error": error}, headers={**cors, **headers})

        page.unroute("**/api/ollama/api/chat")
        page.route("**/api/ollama/api/chat", fulfil)

    answer_with(429, "too many requests", {"Retry-After": "7"})
    web.answer().get_by_role("button", name="Regenerate this answer").click()
    expect(web.answer().locator(".note")).to_contain_text("Slow down. Try again in 7 s.")
    answer_with(401, "token expired", {})
    web.answer().get_by_role("button", name="Regenerate this answer").click()
    expect(web.answer().locator(".note")).to_contain_text("Sign in again")
    expect(page.locator("#banner")).to_contain_text("Your session has expired")


def test_session_renews_silently_and_sign_out(logs: Path, tmp_path: Path, build: Path, browser: Browser) -> None:
    with web_app(logs, tmp_path, build, browser, DEV_ACCESS_TOKEN_TTL_S="3") as web:
        web.sign_in()
        page = web.page
        # The access token is in memory only; the rotating refresh token is all sessionStorage holds.
        first = page.evaluate("sessionStorage.getItem('ctllm.refresh')")
        assert first
        page.wait_for_function("(old) => sessionStorage.getItem('ctllm.refresh') !== old", arg=first, timeout=10_000)
        page.wait_for_function(
            "(old) => sessionStorage.getItem('ctllm.refresh') !== old",
            arg=page.evaluate("sessionStorage.getItem('ctllm.refresh')"),
            timeout=10_000,
        )  # renewed twice: each renewal scheduled the next
        time.sleep(1)
        expect(page.locator("#bridge-pill")).to_have_attribute("data-state", "none")  # the API still answers
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('ctllm.refresh')") is None


def test_sign_out_wins_over_a_renewal_in_flight(logs: Path, tmp_path: Path, build: Path, browser: Browser) -> None:
    """A renewal answered after "Sign out" was clicked must not bring the session back."""
    with web_app(logs, tmp_path, build, browser, DEV_ACCESS_TOKEN_TTL_S="3") as web:
        web.sign_in()
        page = web.page
        renewals: list[Route] = []
        logouts: list[Route] = []
        page.route(re.compile(r"/oauth/token$"), lambda route: renewals.append(route))  # held until released
        page.route(re.compile(r"/logout\?"), lambda route: logouts.append(route))

        def until(held: list[Route]) -> Route:
            deadline = time.monotonic() + 10
            while not held:
                assert time.monotonic() < deadline, "the request never came"
                page.wait_for_timeout(50)
            return held[0]

        renewal = until(renewals)  # the next silent renewal is now in flight
        # A DOM click: Playwright's own would wait for the sign-out navigation this test holds.
        page.get_by_role("button", name="Sign out").evaluate("button => button.click()")
        logout = until(logouts)  # the old page is still alive while its navigation is held
        renewal.continue_()
        time.sleep(0.5)  # the renewal's answer reaches the old page (Playwright cannot evaluate in it now)
        page.unroute(re.compile(r"/oauth/token$"))
        logout.continue_()  # back on the app: with the renewal's tokens kept, it would sign in again
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        expect(page.locator("#banner")).not_to_contain_text("expired")
        assert page.evaluate("sessionStorage.getItem('ctllm.refresh')") is None


def test_a_message_sent_before_any_model_is_listed_goes_once_one_is(
    logs: Path, tmp_path: Path, build: Path, browser: Browser
) -> None:
    """A first chat typed fast: Enter before the bridge's models arrive keeps the message and sends it then."""
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser) as web:
            web.sign_in()
            page = web.page
            expect(page.locator("#bridge-pill")).to_have_attribute("data-state", "none")
            prompt = page.get_by_label("Message", exact=True)
            prompt.fill("taken back")
            prompt.press("Enter")
            expect(page.locator("#send-pending")).to_be_visible()
            prompt.fill("")  # emptied: nothing is waiting any more
            expect(page.locator("#send-pending")).to_be_hidden()
            prompt.fill("hello before the bridge")
            prompt.press("Enter")
            expect(page.locator("#send-pending")).to_have_text("Sends as soon as a model is available.")
            expect(prompt).to_have_value("hello before the bridge")
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            expect(web.answer().locator(".body")).to_contain_text("t1", timeout=20_000)
            expect(page.locator("#send-pending")).to_be_hidden()
            expect(prompt).to_have_value("")
            expect(page.locator("#messages li.msg.user")).to_have_count(1)
            expect(page.locator("#messages li.msg.user")).to_contain_text("hello before the bridge")


EARLIER_CHAT = {
    "format": "cloudtolocalllm-chat",
    "version": 1,
    "conversations": [
        {
            "id": "earlier-chat",
            "title": "Earlier chat",
            "model": FAKE_MODEL,
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        }
    ],
}


@pytest.mark.parametrize("leave", ["open-another", "new-chat"])
def test_a_waiting_message_is_not_sent_into_the_conversation_switched_to(
    logs: Path, tmp_path: Path, build: Path, browser: Browser, leave: str
) -> None:
    """The message box is shared: leaving the conversation a message waits in cancels the wait, so the model's
    arrival sends nothing into the conversation now open; the text stays in the box and goes where Enter says."""
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser) as web:
            web.sign_in()
            page = web.page
            expect(page.locator("#bridge-pill")).to_have_attribute("data-state", "none")
            page.locator("#import-file").set_input_files(
                {"name": "earlier.json", "mimeType": "application/json", "buffer": json.dumps(EARLIER_CHAT).encode()}
            )
            earlier = page.locator("#conversations button.open", has_text="Earlier chat")
            user_messages = page.locator("#messages li.msg.user .body")
            if leave == "new-chat":  # written in the earlier chat, then a new chat is started
                earlier.click()
                expect(user_messages).to_have_text(["hi"])
            prompt = page.get_by_label("Message", exact=True)
            prompt.fill("written before the switch")
            prompt.press("Enter")
            expect(page.locator("#send-pending")).to_be_visible()
            if leave == "open-another":  # written in a new chat, then the earlier chat is opened
                earlier.click()
                expect(user_messages).to_have_text(["hi"])
            else:
                page.get_by_role("button", name="New chat").click()
                expect(user_messages).to_have_count(0)
            expect(page.locator("#send-pending")).to_be_hidden()
            expect(prompt).to_have_value("written before the switch")  # kept, not sent

            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            # loadModels lists the model and (before the fix) sent the waiting message in the same task.
            expect(page.locator("#model")).to_have_value(FAKE_MODEL, timeout=20_000)
            expect(user_messages).to_have_text(["hi"] if leave == "open-another" else [])
            expect(page.locator("#send")).to_be_enabled()  # no answer started either
            expect(page.locator("#messages li.msg.assistant")).to_have_count(1 if leave == "open-another" else 0)
            expect(prompt).to_have_value("written before the switch")
            expect(page.locator("#conversations button.open")).to_have_text(["Earlier chat"])

            prompt.press("Enter")  # sent by the user, into the conversation on screen
            expect(web.answer().locator(".body")).to_contain_text("t1", timeout=20_000)
            expect(prompt).to_have_value("")
            if leave == "open-another":
                expect(user_messages).to_have_text(["hi", "written before the switch"])
                expect(page.locator("#conversations button.open")).to_have_text(["Earlier chat"])
            else:
                expect(user_messages).to_have_text(["written before the switch"])
                expect(page.locator("#conversations button.open")).to_have_text(
                    ["written before the switch", "Earlier chat"]
                )
                page.keyboard.press("Escape")  # a conversation opens only when no answer is streaming
                expect(web.answer()).to_have_attribute("data-state", "stopped")
                earlier.click()
                expect(user_messages).to_have_text(["hi"])


def test_phone_layout_and_keyboard(logs: Path, tmp_path: Path, build: Path, browser: Browser) -> None:
    with contract_double() as backend:
        with web_app(logs, tmp_path, build, browser, viewport=(390, 844)) as web:
            web.stack.bridge(backend.url, user="dev-user", kind="ollama")
            web.sign_in()
            page = web.page
            expect(page.locator("#model")).to_have_value(FAKE_MODEL)
            expect(page.get_by_label("Message", exact=True)).to_be_focused()
            page.keyboard.type("hello from a phone")
            page.keyboard.press("Enter")
            expect(web.answer().locator(".body")).to_contain_text("t3 ")
            page.keyboard.press("Escape")
            expect(web.answer()).to_have_attribute("data-state", "stopped")
            screenshot(page, "chat-phone-fake.png")
            # Nothing wider than the screen.
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.get_by_role("button", name="Chats").click()
            expect(page.locator("#sidebar")).to_be_visible()
            expect(page.locator("#conversations button.open").first).to_have_text("hello from a phone")
