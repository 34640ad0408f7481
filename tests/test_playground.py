"""The playground page, end to end: headless Chromium (Debian's) driven by Playwright, against a real server.

The server is ``llm_app``: real providers aimed at the scripted fake LLM, so answers stream in pieces
with a visible delay. Screenshots of the main views go to a temporary folder; run with
``UPDATE_SCREENSHOTS=1`` to refresh the ones in ``docs/screenshots/``.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import persona_body
from tests.fakellm import Script
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PERSONAS = "/api/v1/chat/personas"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extras install it
    async_playwright = None

# In CI the browser is part of the job (.ci/run installs it): a missing one fails there instead of skipping.
_MAY_SKIP = os.environ.get("CI", "").lower() not in ("1", "true", "yes")

pytestmark = [
    pytest.mark.skipif(
        _MAY_SKIP and not os.path.exists(CHROMIUM),
        reason=f"the playground tests drive Debian's Chromium at {CHROMIUM}, which is not installed "
        "(apt-get install chromium; .ci/run installs it)",
    ),
    pytest.mark.skipif(
        _MAY_SKIP and async_playwright is None, reason="Playwright for Python is not installed (pip install '.[test]')"
    ),
]

TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # Playwright gives every launch a fresh, temporary user data dir of its own.
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    await context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS"):
        folder = ROOT / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


@pytest.fixture
async def base_url(llm_app: Any) -> str:
    url: str = llm_app.state.base_url
    return url


async def make_persona(base_url: str, account: Any, **fields: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
        assert r.status_code == 201, r.text
        return r.json()["persona"]


async def api(base_url: str, account: Any, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        r = await http.request(method, path, json=body, headers=account.headers)
        assert r.status_code < 300, r.text
        result: dict[str, Any] = r.json()
        return result


async def open_playground(page: Page, base_url: str, key: str) -> None:
    await page.goto(f"{base_url}/playground")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Use key").click()
    await expect(page.locator("#persona-list button.persona").first).to_be_visible()


async def pick(page: Page, persona: dict[str, Any]) -> None:
    await page.locator(f'#persona-list [data-persona-id="{persona["id"]}"]').click()
    await expect(page.locator("#editor-title")).to_have_text(persona["name"])
    await expect(page.get_by_label("System prompt")).to_have_value(persona["system_prompt"])


# Serving ------------------------------------------------------------------------------------------------


async def test_the_page_and_its_files_are_served_without_a_key_and_load_nothing_from_elsewhere(base_url):
    async with httpx.AsyncClient(base_url=base_url) as http:
        page = await http.get("/playground")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        html = page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        manifest = json.loads((ROOT / "api" / "static" / "vendor" / "manifest.json").read_text())
        # The charts' stylesheet is uPlot's own, from /vendor like its script.
        vendored = f"/vendor/uplot/uPlot.min.css?v={manifest['uplot']['version']}"
        assert assets and all(a.startswith("/playground/") or a == vendored for a in assets), assets
        assert vendored in assets
        r = await http.get(vendored)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
        for name in (
            "playground.js",
            "chat.js",
            "markdown.js",
            "api.js",
            "sse.js",
            "ui.js",
            "editor.js",
            "cards.js",
            "panels.js",
            "memory.js",
            "insights.js",
            "playground.css",
        ):
            r = await http.get(f"/playground/{name}")
            assert r.status_code == 200, name
            expected = "text/css" if name.endswith(".css") else "javascript"
            assert expected in r.headers["content-type"], (name, r.headers["content-type"])
            assert "http://" not in r.text and "https://" not in r.text, f"{name} loads something from elsewhere"
        # The Markdown libraries the chat imports are the server's own too (/vendor, shipped in the package).
        # And the charts' library (uPlot).
        for script, folder, name in (
            ("markdown.js", "marked", "marked.esm.js"),
            ("markdown.js", "dompurify", "purify.es.js"),
            ("insights.js", "uplot", "uPlot.esm.js"),
        ):
            source = (await http.get(f"/playground/{script}")).text
            module = f"/vendor/{folder}/{name}?v={manifest[folder]['version']}"
            assert f'from "{module}"' in source, f"{script} should import {module}"
            r = await http.get(module)
            assert r.status_code == 200 and "javascript" in r.headers["content-type"], module
        # The API next door still wants a key.
        assert (await http.get(PERSONAS)).status_code == 401


# Key ----------------------------------------------------------------------------------------------------


async def test_the_page_names_an_icon_it_serves_so_browsers_ask_for_no_favicon_ico(page, base_url, alice):
    # A browser asks for /favicon.ico only when the page names no icon; this one names its own, and serves it.
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    await open_playground(page, base_url, alice.key)
    href = await page.locator('link[rel="icon"]').get_attribute("href")
    assert href is not None
    async with httpx.AsyncClient(base_url=base_url) as http:
        icon = await http.get(href)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    await page.wait_for_load_state("networkidle")
    assert failed == []


async def test_the_key_is_kept_for_the_tab_only_and_a_wrong_key_is_refused_visibly(page, base_url, alice):
    mine = await make_persona(base_url, alice)
    await page.goto(f"{base_url}/playground")
    await page.get_by_label("API key").fill("prk_not-a-real-key")
    await page.get_by_role("button", name="Use key").click()
    await expect(page.get_by_test_id("error")).to_contain_text("401")

    await page.get_by_label("API key").fill(alice.key)
    await page.get_by_role("button", name="Use key").click()
    await expect(page.get_by_test_id("persona-list")).to_contain_text(mine["name"])
    await expect(page.get_by_test_id("persona-list")).to_contain_text("Mu")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    assert alice.key not in page.url
    assert await page.evaluate("JSON.stringify(localStorage)") == "{}"
    assert alice.key in await page.evaluate("JSON.stringify(sessionStorage)")

    # A reload keeps the key for this tab; "Forget" drops it.
    await page.reload()
    await expect(page.get_by_test_id("persona-list")).to_contain_text(mine["name"])
    await page.get_by_role("button", name="Forget").click()
    await expect(page.get_by_test_id("persona-list")).to_contain_text("Enter an API key")
    assert await page.evaluate("JSON.stringify(sessionStorage)") == "{}"


# Edit, render, chat, save ----------------------------------------------------------------------------------


async def test_edit_render_stream_a_chat_and_save(page, base_url, alice, fake_llm, screenshots):
    persona = await make_persona(base_url, alice, system_prompt="You are {{persona_name}}. Be brief.")
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)

    # The saved persona renders through its own route.
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("render-system-prompt")).to_contain_text(f"You are {persona['name']}. Be brief.")
    await expect(page.get_by_test_id("render-meta")).to_contain_text("v1 (saved) · openai/")

    # An unsaved edit renders as a draft, with the exact provider request beside it.
    await page.get_by_label("System prompt").fill("You are {{persona_name}}, a pirate. Greet {{user_name}} with Ahoy.")
    await expect(page.get_by_test_id("editor-status")).to_contain_text("unsaved changes")
    await page.get_by_label("Message to render").fill("Where is the treasure?")
    await page.get_by_role("button", name="Render", exact=True).click()
    rendered = f"You are {persona['name']}, a pirate. Greet Alice with Ahoy."
    await expect(page.get_by_test_id("render-system-prompt")).to_contain_text(rendered)
    await expect(page.get_by_test_id("render-meta")).to_contain_text("(editor draft)")
    request = json.loads(await page.get_by_test_id("render-request").inner_text())
    assert request["messages"][0] == {
        "role": "system",
        "content": await page.get_by_test_id("render-system-prompt").inner_text(),
    }
    assert request["messages"][-1] == {"role": "user", "content": "Where is the treasure?"}
    await page.screenshot(path=screenshots / "playground-render.png")

    # Render says how much of the prompt providers can cache, and warns when a per-day value comes early.
    await page.get_by_label("System prompt").fill("Today is {{date}}. " + "Follow the house rules. " * 30)
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("render-cache")).to_contain_text("cache the first 9 of")
    await expect(page.get_by_test_id("render-warnings")).to_contain_text("{{date}}")

    # A render that fails leaves no earlier result under its error.
    await page.get_by_label("System prompt").fill("Hello {{nickname}}")
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("error")).to_contain_text("nickname")
    await expect(page.get_by_test_id("render-result")).to_be_hidden()
    await page.get_by_label("System prompt").fill("You are {{persona_name}}, a pirate. Greet {{user_name}} with Ahoy.")

    # Chat: the answer appears piece by piece.
    fake_llm.script(chunks=("Ahoy, ", "matey! ", "The treasure ", "is buried."), chunk_delay=0.4)
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Your message").fill("Where is the treasure?")
    await page.get_by_role("button", name="Send").click()
    answer = page.get_by_test_id("chat-answer").last
    await expect(answer).to_contain_text("Ahoy,")
    assert "buried" not in await answer.inner_text(), "the whole answer arrived at once"
    await expect(page.get_by_test_id("chat-meta").last).to_contain_text(re.compile(r"\(editor draft\) · openai/\S+"))
    await expect(answer).to_have_text("Ahoy, matey! The treasure is buried.")
    await expect(page.get_by_test_id("chat-status").last).to_contain_text("finished: stop")
    # The draft (with the pirate prompt) is what went upstream.
    assert "a pirate" in fake_llm.chat_requests()[-1].body["messages"][0]["content"]
    await page.screenshot(path=screenshots / "playground-chat.png")

    # Save with a change note: version 2, and the list and status say so.
    await page.get_by_label("Change note").fill("pirate voice")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("updated to version 2")
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 2 · private")
    await expect(page.locator(f'[data-persona-id="{persona["id"]}"]')).to_contain_text("v2")
    saved = (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]
    assert saved["system_prompt"] == "You are {{persona_name}}, a pirate. Greet {{user_name}} with Ahoy."


async def test_a_new_draft_is_tried_and_saved_from_the_page(page, base_url, alice, fake_llm):
    await open_playground(page, base_url, alice.key)
    await page.get_by_role("button", name="New draft").click()
    name = f"Draft {os.getpid()}-{id(page)}"
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Description").fill("Answers in rhyme.")
    await page.get_by_label("System prompt").fill("You are {{persona_name}}. Rhyme for {{user_name}}.")
    await page.get_by_label("Personality traits (JSON)").fill('{"tone": "playful"}')
    await page.get_by_label("Temperature").fill("0.3")
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("render-system-prompt")).to_contain_text("tone: playful")
    assert json.loads(await page.get_by_test_id("render-request").inner_text())["temperature"] == 0.3

    fake_llm.script(chunks=("Roses ", "are red."))
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Your message").fill("A poem please")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-answer").last).to_have_text("Roses are red.")

    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 1 · private")
    await expect(page.get_by_test_id("persona-list")).to_contain_text(name)
    listed = (await api(base_url, alice, "GET", f"{PERSONAS}?limit=200"))["personas"]
    saved = next(p for p in listed if p["name"] == name)
    assert saved["model_settings"]["temperature"] == 0.3 and saved["personality_traits"] == {"tone": "playful"}


async def test_a_provider_failure_mid_answer_is_shown_in_the_chat(page, base_url, alice, fake_llm):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    fake_llm.script(chunks=("Half an ", "answer", " never sent"), error_after=2)
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Your message").fill("Go on")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-answer").last).to_have_text("Half an answer")
    await expect(page.get_by_test_id("chat-status").last).to_contain_text("error (")
    await expect(page.get_by_test_id("error")).to_contain_text("The provider failed")


async def conversation(base_url: str, account: Any, page: Page) -> tuple[str, list[str]]:
    """The kept conversation the chat panel names, and its user messages as stored."""
    line = page.get_by_test_id("chat-conversation")
    await expect(line).to_have_attribute("data-conversation-id", re.compile(r"\S"))
    conversation_id = await line.get_attribute("data-conversation-id")
    assert conversation_id is not None
    body = await api(base_url, account, "GET", f"/api/v1/chat/conversations/{conversation_id}")
    return conversation_id, [m["content"] for m in body["messages"] if m["role"] == "user"]


async def send(page: Page, message: str, answer: str) -> None:
    await page.get_by_label("Your message").fill(message)
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-answer").last).to_have_text(answer)
    await expect(page.get_by_test_id("chat-status").last).to_contain_text("finished: stop")


async def test_a_kept_conversation_continues_and_a_new_one_starts(page, base_url, alice, fake_llm, screenshots):
    persona = await make_persona(base_url, alice)
    chats: list[dict[str, Any]] = []
    page.on("request", lambda r: chats.append(r.post_data_json) if r.url.endswith("/api/v1/chat") else None)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Keep the conversation").check()
    await expect(page.get_by_test_id("chat-mode")).to_contain_text("unsaved edits in the editor are not used")

    fake_llm.script(chunks=("Nice ", "to meet you."))
    await send(page, "I am Ann.", "Nice to meet you.")
    await expect(page.get_by_test_id("chat-meta").last).to_contain_text(f"{persona['name']} v1")
    fake_llm.script(chunks=("You are ", "Ann."))
    await send(page, "Who am I?", "You are Ann.")
    await expect(page.get_by_test_id("chat-log").locator("li")).to_have_count(2)
    first, messages = await conversation(base_url, alice, page)
    assert messages == ["I am Ann.", "Who am I?"]
    assert [c.get("conversation_id") for c in chats] == [None, first]
    assert all(c["persona_id"] == persona["id"] for c in chats)
    # The earlier turn went upstream with the second one.
    upstream = [m["content"] for m in fake_llm.chat_requests()[-1].body["messages"] if m["role"] != "system"]
    assert upstream == ["I am Ann.", "Nice to meet you.", "Who am I?"]
    await expect(page.get_by_test_id("chat-conversation")).to_contain_text("2 turns")
    await page.screenshot(path=screenshots / "playground-conversation.png")

    await page.get_by_role("button", name="New conversation").click()
    await expect(page.get_by_test_id("chat-log").locator("li")).to_have_count(0)
    await send(page, "Hello again", "Hello from the fake model.")
    second, messages = await conversation(base_url, alice, page)
    assert second != first and messages == ["Hello again"]
    assert chats[-1].get("conversation_id") is None


async def test_another_users_public_persona_answers_in_a_kept_conversation(page, base_url, alice, bob, fake_llm):
    persona = await make_persona(base_url, alice, visibility="public")
    await open_playground(page, base_url, bob.key)
    await page.locator(f'#persona-list [data-persona-id="{persona["id"]}"]').click()
    await expect(page.locator("#editor-title")).to_have_text(persona["name"])
    await expect(page.locator("#editor-readonly")).to_be_visible()
    await page.get_by_role("tab", name="Chat").click()
    await expect(page.get_by_label("Keep the conversation")).to_be_checked()
    await expect(page.get_by_label("Keep the conversation")).to_be_disabled()
    await expect(page.get_by_test_id("chat-conversation")).to_contain_text("not yours")

    fake_llm.script(chunks=("Hi ", "Bob."))
    await send(page, "Hello", "Hi Bob.")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    _, messages = await conversation(base_url, bob, page)
    assert messages == ["Hello"]

    # A draft of one's own goes back to previews.
    await page.get_by_role("button", name="New draft").click()
    await expect(page.get_by_label("Keep the conversation")).to_be_enabled()
    await expect(page.get_by_label("Keep the conversation")).not_to_be_checked()
    await expect(page.get_by_test_id("chat-log").locator("li")).to_have_count(0)


async def test_a_preview_refused_with_403_is_answered_in_a_kept_conversation(page, base_url, alice, fake_llm):
    # Should the page take a persona for the caller's own and preview be refused, the message still gets an answer.
    persona = await make_persona(base_url, alice)
    refused = {"success": False, "message": "Only its owner may preview it.", "error": {"code": "forbidden"}}
    await page.route(f"**{PERSONAS}/preview", lambda route: route.fulfill(status=403, json=refused))
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Your message").fill("Hello")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-status").first).to_contain_text("preview is for the persona's owner")
    await expect(page.get_by_test_id("chat-answer").last).to_have_text("Hello from the fake model.")
    await expect(page.get_by_label("Keep the conversation")).to_be_checked()
    await expect(page.get_by_test_id("error")).to_be_hidden()
    _, messages = await conversation(base_url, alice, page)
    assert messages == ["Hello"]


# Errors --------------------------------------------------------------------------------------------------


async def test_an_unknown_template_variable_is_reported_with_its_field(page, base_url, alice, screenshots):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_label("System prompt").fill("Hello {{nickname}}!")
    await page.get_by_role("button", name="Render", exact=True).click()
    banner = page.get_by_test_id("error")
    await expect(banner).to_contain_text("400")
    await expect(banner).to_contain_text("unknown template variable {{nickname}}")
    await expect(banner).to_contain_text("Field: persona.system_prompt")
    await expect(page.get_by_label("System prompt")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#f-system_prompt-error")).to_contain_text("{{nickname}}")
    await expect(page.get_by_test_id("render-result")).to_be_hidden()
    await page.screenshot(path=screenshots / "playground-error.png")

    # Saving is refused the same way, naming the field of the persona body; nothing changes.
    await page.get_by_role("button", name="Save").click()
    await expect(banner).to_contain_text("Could not save (400")
    await expect(banner).to_contain_text("Field: system_prompt")
    assert (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]["version"] == 1

    # A mistake the page can see itself is named before anything is sent.
    await page.get_by_label("System prompt").fill("Hello {{user_name}}!")
    await page.get_by_label("Capabilities (JSON)").fill("{not json")
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(banner).to_contain_text("capabilities is not valid JSON")
    await expect(page.get_by_label("Capabilities (JSON)")).to_have_attribute("aria-invalid", "true")


# Lorebook, greetings, example messages, avatar -----------------------------------------------------------


async def whole_page_screenshot(page: Page, path: Path, part: tuple[str, str] | None = None) -> None:
    """The page in a window tall enough for all of it, so the sticky Save bar stays where the form ends; with
    ``part``, only the editor's column from the top of one element to the bottom of another."""
    viewport = page.viewport_size or {"width": 1280, "height": 800}
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": viewport["width"], "height": height})
    clip = None
    if part:
        column = await page.locator(".editor").bounding_box()
        top, bottom = await page.locator(part[0]).bounding_box(), await page.locator(part[1]).bounding_box()
        assert column and top and bottom
        y = top["y"] - 24
        clip = {"x": column["x"], "y": y, "width": column["width"], "height": bottom["y"] + bottom["height"] + 12 - y}
    await page.screenshot(path=path, clip=clip)
    await page.set_viewport_size(viewport)


KEYS = "Keys (comma separated)"


async def add_entry(page: Page, name: str, keys: str, content: str) -> Any:
    await page.get_by_role("button", name="Add an entry").click()
    entry = page.get_by_test_id("lore-entry").last
    await entry.get_by_label("Entry name").fill(name)
    await entry.get_by_label(KEYS, exact=True).fill(keys)
    await entry.get_by_label("Content", exact=True).fill(content)
    return entry


async def test_a_lorebook_is_written_in_the_editor_saved_and_its_decisions_rendered(page, base_url, alice, screenshots):
    persona = await make_persona(base_url, alice, system_prompt="You are {{persona_name}}, keeper of the old maps.")
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    # A saved persona's prompt is counted as soon as it is loaded.
    await expect(page.get_by_test_id("editor-context")).to_contain_text(re.compile(r"Prompt: \d+ tokens · \S+ window"))
    await expect(page.get_by_test_id("lore-count")).to_have_text("no entries")

    await page.get_by_label("Scan depth").fill("3")
    await page.get_by_label("Token budget").fill("500")
    dragons = await add_entry(page, "Dragons", "dragon, wyrm", "Dragons sleep under the Grey Peaks.")
    await dragons.get_by_label("Insertion order").fill("50")
    await dragons.get_by_label("Whole words").uncheck()
    weather = await add_entry(page, "Weather", "rain", "It always rains in Lowtown.")
    await weather.get_by_label("Secondary keys (comma separated)").fill("Lowtown, harbour")
    await weather.get_by_label("Secondary logic").select_option("and_all")
    await weather.get_by_label("Position").select_option("at_depth")
    await weather.get_by_label("Depth").fill("1")
    await weather.get_by_label("Role", exact=True).select_option("user")
    await weather.get_by_label("Probability (%)").fill("80")
    await weather.get_by_label("Group").fill("climate")
    await weather.get_by_label("Sticky (turns)").fill("2")
    await weather.get_by_label("Cooldown (turns)").fill("1")
    await weather.get_by_label("Delay (turns)").fill("3")
    await weather.get_by_label("Case sensitive").check()
    await weather.get_by_label("Enabled").uncheck()
    scratch = await add_entry(page, "Scratch", "tmp", "Goes away.")
    await scratch.get_by_label("Constant").check()
    await expect(page.get_by_test_id("lore-count")).to_have_text("3 entries")
    await expect(page.get_by_test_id("editor-status")).to_contain_text("unsaved changes")
    await page.get_by_role("button", name="Remove entry 3").click()
    await expect(page.get_by_test_id("lore-entry")).to_have_count(2)
    await expect(page.get_by_test_id("lore-entry").last.locator("summary")).to_contain_text(
        "Entry 2: Weather · disabled"
    )

    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("updated to version 2")
    saved = (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]
    book = saved["lorebook"]
    assert (book["scan_depth"], book["token_budget"], book["recursive"]) == (3, 500, False)
    first, second = book["entries"]
    assert first["id"] and second["id"] and first["id"] != second["id"]
    assert (first["name"], first["keys"], first["content"]) == (
        "Dragons",
        ["dragon", "wyrm"],
        "Dragons sleep under the Grey Peaks.",
    )
    assert (first["insertion_order"], first["whole_words"], first["enabled"], first["position"]) == (
        50,
        False,
        True,
        "system",
    )
    assert {
        k: second[k] for k in ("secondary_keys", "selective_logic", "position", "depth", "role", "probability")
    } == {
        "secondary_keys": ["Lowtown", "harbour"],
        "selective_logic": "and_all",
        "position": "at_depth",
        "depth": 1,
        "role": "user",
        "probability": 80,
    }
    assert {
        k: second[k] for k in ("group", "sticky", "cooldown", "delay", "case_sensitive", "enabled", "constant")
    } == {
        "group": "climate",
        "sticky": 2,
        "cooldown": 1,
        "delay": 3,
        "case_sensitive": True,
        "enabled": False,
        "constant": False,
    }
    # The editor shows the book as saved, and is clean again.
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 2 · private")
    await expect(page.get_by_test_id("lore-entry").first.get_by_label(KEYS, exact=True)).to_have_value("dragon, wyrm")

    # A message that names a key: render lists the entry as activated by it, with the tiers' tokens.
    await page.get_by_label("Message to render").fill("Tell me about the dragon of the north")
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("render-meta")).to_contain_text("v2 (saved)")
    decision = page.locator(f'[data-testid="lore-decision"][data-entry-id="{first["id"]}"]')
    await expect(decision.get_by_test_id("lore-outcome")).to_have_text("IN")
    await expect(decision.get_by_test_id("lore-reason")).to_have_text("key")
    await expect(decision).to_contain_text("matched “dragon”")
    await expect(page.get_by_test_id("lore-decision")).to_have_count(1)  # the disabled entry had no key here
    lore_row = page.locator('[data-testid="render-section"][data-kind="lore"]')
    await expect(lore_row).to_contain_text("Lore")
    await expect(page.locator('[data-testid="render-section"][data-kind="system"]')).to_be_visible()
    await expect(page.get_by_test_id("render-context")).to_contain_text("no turns dropped")
    await expect(page.get_by_test_id("render-context")).to_contain_text(re.compile(r"tokens used \(window [\d,]+"))
    request = json.loads(await page.get_by_test_id("render-request").inner_text())
    assert any("Grey Peaks" in m["content"] for m in request["messages"] if m["role"] == "system")
    # The editor's line now counts the prompt with its lore, against the model's window.
    await expect(page.get_by_test_id("editor-context")).to_contain_text(
        re.compile(r"Prompt: \d+ tokens \(\+ \d+ of lore\)")
    )
    await expect(page.locator("#render-conversation")).to_be_hidden()  # no kept conversation to render in
    await page.get_by_test_id("lore-entry").first.locator("summary").click()
    await whole_page_screenshot(page, screenshots / "playground-lorebook.png")


async def test_render_in_the_kept_conversation_says_which_turns_were_dropped(page, base_url, alice, fake_llm):
    settings = {"context_window": 256, "max_tokens": 64, "summaries": False}
    persona = await make_persona(base_url, alice, model_settings=settings)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Keep the conversation").check()
    for n in range(3):
        await send(page, f"Turn {n}: " + "many words " * 25, "Hello from the fake model.")
    await page.get_by_role("tab", name="Render").click()
    await expect(page.get_by_label(re.compile("In the chat's kept conversation"))).to_be_checked()
    await page.get_by_label("Message to render").fill("And now? " + "more words " * 25)
    await page.get_by_role("button", name="Render", exact=True).click()
    conversation_id = await page.get_by_test_id("chat-conversation").get_attribute("data-conversation-id")
    await expect(page.get_by_test_id("render-meta")).to_contain_text(f"in conversation {conversation_id}")
    # The window holds the newest turn (its two messages); the two before it are dropped.
    await expect(page.get_by_test_id("render-context")).to_contain_text("2 earlier turns dropped to fit")
    await expect(page.get_by_test_id("render-context")).to_contain_text("window 256")
    history = page.locator('[data-testid="render-section"][data-kind="history"]')
    await expect(history.locator("td").last).to_have_text("2")
    request = json.loads(await page.get_by_test_id("render-request").inner_text())
    assert "Turn 0:" not in json.dumps(request) and "Turn 2:" in json.dumps(request)

    # Unticked, the same render is the message alone.
    await page.get_by_label(re.compile("In the chat's kept conversation")).uncheck()
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("render-context")).to_contain_text("no turns dropped")
    await expect(page.get_by_test_id("render-meta")).not_to_contain_text("in conversation")


async def test_a_bad_regex_key_is_marked_on_its_entry(page, base_url, alice, screenshots):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    entry = await add_entry(page, "Broken", "dragon, /(unclosed/", "Never saved.")
    await entry.get_by_label("Keys are regexes").check()

    await page.get_by_role("button", name="Save").click()
    banner = page.get_by_test_id("error")
    await expect(banner).to_contain_text("Could not save (400")
    await expect(banner).to_contain_text("Field: lorebook.entries[0].keys[1]")
    keys = entry.get_by_label(KEYS, exact=True)
    await expect(keys).to_have_attribute("aria-invalid", "true")
    note_id = await keys.get_attribute("aria-describedby")
    assert note_id
    await expect(page.locator(f"#{note_id}")).to_be_visible()
    await expect(page.locator(f"#{note_id}")).to_contain_text("keys[1]")
    assert (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]["lorebook"] is None

    # A collapsed entry is opened again to show its mark.
    await entry.locator("summary").click()
    await expect(keys).to_be_hidden()
    await page.get_by_role("button", name="Save").click()
    await expect(keys).to_be_visible()
    await expect(keys).to_have_attribute("aria-invalid", "true")

    # A draft render tries the book anyway, and warns about the key that cannot match.
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("render-warnings")).to_contain_text("lorebook entry 'Broken': key '/(unclosed/'")

    # A number the page can read itself is named before anything is sent.
    await entry.get_by_label(KEYS, exact=True).fill("dragon")
    await entry.get_by_label("Depth").fill("deep")
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(banner).to_contain_text("lorebook.entries[0].depth must be a whole number")
    await expect(entry.get_by_label("Depth")).to_have_attribute("aria-invalid", "true")


async def test_greetings_and_example_messages_round_trip_and_the_avatar_has_a_placeholder(
    page, base_url, alice, screenshots
):
    persona = await make_persona(
        base_url,
        alice,
        name="Quill " + os.urandom(4).hex(),
        greetings=["Hello there!", "Well met."],
        example_messages=[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A scribe."}],
        model_settings={"context_window": 4096, "summaries": False},
    )
    avatars: list[int] = []
    page.on("response", lambda r: avatars.append(r.status) if r.url.endswith(f"{persona['id']}/avatar") else None)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    # No avatar: the persona's initial stands in for it.
    await expect(page.get_by_test_id("avatar-placeholder")).to_have_text("Q")
    await expect(page.get_by_test_id("avatar-placeholder")).to_be_visible()
    await expect(page.locator("#editor-avatar")).to_be_hidden()
    await expect(page.get_by_label("Greeting 1 (opens a conversation)", exact=True)).to_have_value("Hello there!")
    await expect(page.get_by_label("Greeting 2", exact=True)).to_have_value("Well met.")
    await expect(page.get_by_label("Example message 2", exact=True)).to_have_value("A scribe.")
    await expect(page.get_by_label("Role 2", exact=True)).to_have_value("assistant")
    await expect(page.get_by_label("Context window")).to_have_value("4096")
    await expect(page.get_by_test_id("editor-context")).to_contain_text("window 4,096 (3,072 for the request)")

    await page.get_by_label("Greeting 2", exact=True).fill("Well met, traveller.")
    await page.get_by_role("button", name="Remove greeting 1").click()
    await page.get_by_role("button", name="Add a greeting").click()
    await page.get_by_label("Greeting 2", exact=True).fill("Ink is ready.")
    await page.get_by_role("button", name="Remove example message 1").click()
    await page.get_by_role("button", name="Add an example message").click()
    await expect(page.get_by_label("Role 2", exact=True)).to_have_value("user")  # after the persona's line, the user's
    await page.get_by_label("Example message 2", exact=True).fill("Write me a letter.")
    await page.get_by_label("Role 2", exact=True).select_option("system")
    await page.get_by_label("Scenario").fill("A quiet scriptorium.")
    # An empty greeting is refused by the server, and marked where it is.
    await page.get_by_role("button", name="Add a greeting").click()
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("error")).to_contain_text("Field: greetings[2]")
    await expect(page.get_by_label("Greeting 3", exact=True)).to_have_attribute("aria-invalid", "true")
    await page.get_by_role("button", name="Remove greeting 3").click()
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 2 · private")

    saved = (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]
    assert saved["greetings"] == ["Well met, traveller.", "Ink is ready."]
    assert saved["example_messages"] == [
        {"role": "assistant", "content": "A scribe."},
        {"role": "system", "content": "Write me a letter."},
    ]
    assert saved["scenario"] == "A quiet scriptorium."
    # Model settings the editor has no input for are saved as they were.
    assert (saved["model_settings"]["context_window"], saved["model_settings"]["summaries"]) == (4096, False)
    assert saved["lorebook"] is None

    # A fresh load shows what was saved.
    await page.reload()
    await expect(page.locator("#persona-list button.persona").first).to_be_visible()
    await pick(page, {**persona, "system_prompt": saved["system_prompt"]})
    await expect(page.get_by_label("Greeting 1 (opens a conversation)", exact=True)).to_have_value(
        "Well met, traveller."
    )
    await expect(page.get_by_label("Greeting 2", exact=True)).to_have_value("Ink is ready.")
    await expect(page.get_by_label("Example message 2", exact=True)).to_have_value("Write me a letter.")
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 2 · private")
    assert avatars and all(status == 404 for status in avatars)
    await whole_page_screenshot(page, screenshots / "playground-greetings.png", part=("#f-scenario", "#examples-part"))


async def test_an_avatar_the_server_answers_replaces_the_placeholder(page, base_url, alice):
    # The avatar routes (PUT/GET /{id}/avatar) come with cards in full; here the page's side is checked with the
    # browser answering GET /{id}/avatar itself, with the key the page must send.
    persona = await make_persona(base_url, alice)
    image = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(image, format="PNG")
    keys: list[str | None] = []

    async def answer(route: Any) -> None:
        keys.append(route.request.headers.get("x-api-key"))
        await route.fulfill(status=200, content_type="image/png", body=image.getvalue())

    await page.route(f"**{PERSONAS}/{persona['id']}/avatar", answer)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    avatar = page.locator("#editor-avatar")
    await expect(avatar).to_be_visible()
    await expect(avatar).to_have_attribute("alt", f"Avatar of {persona['name']}")
    assert await avatar.evaluate("img => img.naturalWidth") == 8
    await expect(page.get_by_test_id("avatar-placeholder")).to_be_hidden()
    assert keys == [alice.key]

    # A new draft has no avatar: the placeholder is back.
    await page.get_by_role("button", name="New draft").click()
    await expect(page.get_by_test_id("avatar-placeholder")).to_be_visible()
    await expect(avatar).to_be_hidden()


# Compare -------------------------------------------------------------------------------------------------


async def test_two_versions_answer_side_by_side(page, base_url, alice, fake_llm, screenshots):
    persona = await make_persona(base_url, alice, system_prompt="Version one of {{persona_name}}.")
    await api(
        base_url,
        alice,
        "PUT",
        f"{PERSONAS}/{persona['id']}",
        {"system_prompt": "Version two.", "change_note": "shorter"},
    )
    persona["system_prompt"] = "Version two."
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Compare").click()
    await expect(page.get_by_label("Candidate 1", exact=True)).to_have_value("v1")
    await expect(page.get_by_label("Candidate 2", exact=True)).to_have_value("v2")

    fake_llm.default = fake_llm.script(chunks=("Same ", "words ", "from ", "both."), chunk_delay=0.2)
    await page.get_by_role("button", name="Compare", exact=True).click()
    left, right = page.get_by_test_id("compare-0"), page.get_by_test_id("compare-1")
    await expect(left.locator(".answer-title")).to_have_text("Version 1")
    await expect(right.locator(".answer-title")).to_contain_text("Version 2 (current) — shorter")
    await expect(left.locator(".answer-text")).to_have_text("Same words from both.")
    await expect(right.locator(".answer-text")).to_have_text("Same words from both.")
    await expect(left.locator(".meta")).to_contain_text(
        re.compile(rf"{persona['name']} v1 · openai/\S+ · 11 in / 7 out tokens")
    )
    await expect(right.locator(".meta")).to_contain_text(
        re.compile(rf"{persona['name']} v2 · openai/\S+ · 11 in / 7 out tokens")
    )
    systems = sorted(r.body["messages"][0]["content"] for r in fake_llm.chat_requests()[-2:])
    assert systems[0].startswith(f"Version one of {persona['name']}.") and systems[1].startswith("Version two.")
    await page.screenshot(path=screenshots / "playground-compare.png")


async def test_four_candidates_answer_side_by_side(page, base_url, alice, fake_llm, screenshots):
    persona = await make_persona(base_url, alice, system_prompt="Version one of {{persona_name}}.")
    await api(base_url, alice, "PUT", f"{PERSONAS}/{persona['id']}", {"system_prompt": "Version two."})
    persona["system_prompt"] = "Version two."
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_label("System prompt").fill("Draft words.")
    await page.get_by_role("tab", name="Compare").click()
    await page.get_by_role("button", name="Add a candidate").click()
    await page.get_by_role("button", name="Add a candidate").click()
    await expect(page.get_by_role("button", name="Add a candidate")).to_be_disabled()
    await expect(page.get_by_label("Candidate 3", exact=True)).to_have_value("draft")
    await page.get_by_label("Candidate 4", exact=True).select_option("v1")

    fake_llm.default = fake_llm.script(chunks=("Four ", "at ", "once."), chunk_delay=0.1)
    await page.get_by_role("button", name="Compare", exact=True).click()
    titles = ["Version 1", "Version 2 (current)", "Editor (unsaved draft)", "Version 1"]
    for i, title in enumerate(titles):
        column = page.get_by_test_id(f"compare-{i}")
        await expect(column.locator(".answer-title")).to_have_text(title)
        await expect(column.locator(".answer-text")).to_have_text("Four at once.")
        await expect(column.locator(".meta")).to_contain_text("11 in / 7 out tokens")
    await expect(page.get_by_test_id("compare-status")).to_have_text("4 candidates answered.")
    systems = sorted(r.body["messages"][0]["content"].split(".")[0] for r in fake_llm.chat_requests()[-4:])
    one = f"Version one of {persona['name']}"
    assert systems == ["Draft words", one, one, "Version two"]
    await page.screenshot(path=screenshots / "playground-compare-four.png")

    # A candidate can be taken out again, down to two.
    await page.get_by_role("button", name="Remove candidate 3").click()
    await expect(page.get_by_label("Candidate 3", exact=True)).to_have_value("v1")
    await page.get_by_role("button", name="Remove candidate 3").click()
    await expect(page.get_by_role("button", name=re.compile("Remove candidate"))).to_have_count(0)


async def test_stop_ends_a_comparison_and_every_candidate_upstream(page, base_url, alice, fake_llm):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Compare").click()
    await page.get_by_role("button", name="Add a candidate").click()
    fake_llm.default = Script(chunks=tuple(f"w{n} " for n in range(60)), chunk_delay=0.2)
    before = len(fake_llm.chat_requests())
    await page.get_by_role("button", name="Compare", exact=True).click()
    await expect(page.get_by_test_id("compare-0").locator(".answer-text")).to_contain_text("w1 ")
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_test_id("compare-status")).to_have_text("Stopped: 3 of 3 candidates were cut off.")
    for i in range(3):
        await expect(page.get_by_test_id(f"compare-{i}").locator(".meta")).to_contain_text("stopped")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(page.get_by_role("button", name="Compare", exact=True)).to_be_enabled()
    upstream = fake_llm.chat_requests()[before:]
    assert len(upstream) == 3
    for request in upstream:
        assert await request.wait_disconnected(within=5.0), "a candidate kept talking to its provider"
        assert not request.completed


# Tests ---------------------------------------------------------------------------------------------------


async def test_tests_are_added_run_and_deleted(page, base_url, alice, fake_llm, screenshots):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Tests").click()
    await expect(page.get_by_test_id("tests-summary")).to_have_text("No tests yet.")

    async def add(name: str, message: str, **fields: str) -> None:
        if not await page.locator("#test-add").evaluate("details => details.open"):
            await page.get_by_text("Add a test").click()
        await page.get_by_label("Test name").fill(name)
        await page.get_by_label("Test message").fill(message)
        for label, value in fields.items():
            await page.get_by_label(label).fill(value)
        await page.get_by_role("button", name="Add test").click()
        await expect(page.get_by_test_id("tests-list")).to_contain_text(name)

    await add("says hello", "Hi there", **{"Contains (comma-separated)": "hello, fake"})
    await add("stays short", "Tell me everything", **{"At most this many characters": "5"})
    await add("no apologies", "Hi", **{"Does not contain (comma-separated)": "sorry", "Matches regex": "^Hello"})
    await expect(page.get_by_test_id("tests-summary")).to_have_text("3 tests")

    fake_llm.default = fake_llm.script(chunks=("Hello from ", "the fake model."))
    await page.get_by_role("button", name="Run tests").click()
    await expect(page.get_by_test_id("tests-summary")).to_contain_text("2 passed, 1 failed")
    tests = page.get_by_test_id("test")
    await expect(tests.filter(has_text="says hello").get_by_test_id("test-result")).to_have_text("PASS")
    await expect(tests.filter(has_text="no apologies").get_by_test_id("test-result")).to_have_text("PASS")
    failing = tests.filter(has_text="stays short")
    await expect(failing.get_by_test_id("test-result")).to_have_text("FAIL")
    await expect(failing).to_contain_text("answer is 26 characters, more than max_chars 5")
    await page.screenshot(path=screenshots / "playground-tests.png")

    await page.get_by_role("button", name="Delete test stays short").click()
    await expect(tests).to_have_count(2)
    await expect(page.get_by_test_id("tests-list")).not_to_contain_text("stays short")
    listed = (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}/tests"))["tests"]
    assert sorted(t["name"] for t in listed) == ["no apologies", "says hello"]


async def test_a_judged_test_shows_its_rubric_score_and_reason(page, base_url, alice, fake_llm):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Tests").click()
    await page.get_by_text("Add a test").click()
    await page.get_by_label("Test name").fill("recommends a book")
    await page.get_by_label("Test message").fill("What should I read?")
    await page.get_by_label("Judged by a grader against this rubric").fill("Names a book and says why.")
    await page.get_by_label("Passing score (0 to 1)").fill("0.8")
    await page.get_by_role("button", name="Add test").click()
    test = page.get_by_test_id("test").filter(has_text="recommends a book")
    await expect(test).to_contain_text("judged against “Names a book and says why.” (passes at 0.8)")

    # The persona's provider (the fake model) answers, then grades.
    fake_llm.enqueue(Script(chunks=("Read Dune.",)), Script(chunks=('{"score": 0.5, "reason": "No reason given."}',)))
    await page.get_by_role("button", name="Run tests").click()
    await expect(test.get_by_test_id("test-result")).to_have_text("FAIL")
    await expect(test.get_by_test_id("test-grade")).to_have_text("Score 0.5: No reason given.")
    await expect(test).to_contain_text("the grader scored the answer 0.5, below the threshold 0.8: No reason given.")


async def test_a_bad_test_is_refused_naming_its_field(page, base_url, alice):
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Tests").click()
    await page.get_by_text("Add a test").click()
    await page.get_by_label("Test name").fill("broken")
    await page.get_by_label("Test message").fill("Hi")
    await page.get_by_label("Matches regex").fill("(unclosed")
    await page.get_by_role("button", name="Add test").click()
    await expect(page.get_by_test_id("error")).to_contain_text("Field: expect.regex")
    await expect(page.get_by_test_id("tests-list")).not_to_contain_text("broken")


# Versions ------------------------------------------------------------------------------------------------


async def test_versions_are_listed_viewed_and_restored(page, base_url, alice, screenshots):
    persona = await make_persona(base_url, alice, system_prompt="First words of {{persona_name}}.")
    await api(
        base_url,
        alice,
        "PUT",
        f"{PERSONAS}/{persona['id']}",
        {"system_prompt": "Second words.", "change_note": "rewrite"},
    )
    persona["system_prompt"] = "Second words."
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Versions").click()
    versions = page.get_by_test_id("version")
    await expect(versions).to_have_count(2)
    await expect(versions.first).to_contain_text("Version 2")
    await expect(versions.first).to_contain_text("rewrite")

    await page.get_by_role("button", name="View version 1").click()
    await expect(page.get_by_test_id("version-view")).to_contain_text("First words of {{persona_name}}.")
    await page.screenshot(path=screenshots / "playground-versions.png")

    await page.get_by_role("button", name="Restore version 1").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("restored from version 1 as 3")
    await expect(page.get_by_label("System prompt")).to_have_value("First words of {{persona_name}}.")
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 3 · private")
    await expect(versions).to_have_count(3)
    await expect(versions.first).to_contain_text("Restored version 1")
    saved = (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]
    assert (saved["version"], saved["system_prompt"]) == (3, "First words of {{persona_name}}.")


# Someone else's persona, delete, import and export ---------------------------------------------------------


async def test_a_persona_of_someone_else_is_read_only(page, base_url, alice):
    await open_playground(page, base_url, alice.key)
    await page.get_by_test_id("persona-list").get_by_role("button", name=re.compile(r"^Mu\b")).click()
    await expect(page.locator("#editor-title")).to_have_text("Mu")
    await expect(page.locator("#editor-readonly")).to_be_visible()
    await expect(page.get_by_label("System prompt")).to_be_disabled()
    await expect(page.get_by_role("button", name="Save")).to_be_disabled()
    await expect(page.get_by_role("button", name="Delete", exact=True)).to_be_disabled()
    await expect(page.get_by_test_id("error")).to_be_hidden()


async def test_export_import_and_delete(page, base_url, alice, tmp_path):
    persona = await make_persona(base_url, alice, capabilities={"sailing": True})
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)

    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Export").click()
    download = await download_info.value
    exported = tmp_path / download.suggested_filename
    await download.save_as(exported)
    document = json.loads(exported.read_text())
    assert document["format"] == "persona-runtime/v1"
    assert document["persona"]["capabilities"] == {"sailing": True}

    # Import it back under another name: it becomes a persona of the caller's, shown in the editor.
    document["persona"]["name"] = persona["name"] + " (copy)"
    exported.write_text(json.dumps(document))
    await page.get_by_label("Import a JSON or PNG card").set_input_files(exported)
    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page.locator("#editor-title")).to_have_text(persona["name"] + " (copy)")
    await expect(page.get_by_test_id("persona-list")).to_contain_text(persona["name"] + " (copy)")

    # Importing the same file again is a 409 whose message is shown.
    await page.get_by_label("Import a JSON or PNG card").set_input_files(exported)
    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page.get_by_test_id("error")).to_contain_text("Could not import (409")

    # Delete the copy: it leaves the list and the editor starts a new draft.
    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.locator("#editor-title")).to_have_text("New draft")
    await expect(page.get_by_test_id("persona-list")).not_to_contain_text(persona["name"] + " (copy)")
    await expect(page.get_by_test_id("persona-list")).to_contain_text(persona["name"])


# Memory --------------------------------------------------------------------------------------------------

MEMORIES = "/api/v1/memories"


async def test_memories_are_added_edited_and_deleted_in_the_memory_panel(page, base_url, alice, bob):
    sailor = await make_persona(base_url, alice, name="Sailor " + os.urandom(4).hex())
    cook = await make_persona(base_url, alice, name="Cook " + os.urandom(4).hex())
    await open_playground(page, base_url, alice.key)
    await page.get_by_role("tab", name="Memory").click()
    summary, memories = page.get_by_test_id("memory-summary"), page.get_by_test_id("memory")
    await expect(summary).to_have_text("No memories yet.")
    await expect(page.get_by_label("Personas may remember me")).to_be_checked()

    async def add(content: str, persona: str) -> None:
        await page.get_by_label("New memory").fill(content)
        await page.get_by_label("Remembered by").select_option(label=persona)
        await page.get_by_role("button", name="Add memory").click()
        await expect(page.get_by_test_id("notice")).to_contain_text("Memory added for")

    # One for a persona, one for all of them: newest first, each with whose it is and where it came from.
    await add("I keep a boat in Lisbon.", sailor["name"])
    await add("Call me Ali.", "All personas")
    await expect(memories).to_have_count(2)
    await expect(summary).to_have_text("2 memories")
    await expect(memories.first.get_by_test_id("memory-content")).to_have_text("Call me Ali.")
    await expect(memories.first.get_by_test_id("memory-meta")).to_contain_text("All personas · told by you · updated")
    await expect(memories.last.get_by_test_id("memory-meta")).to_contain_text(f"{sailor['name']} · told by you")
    listed = (await api(base_url, alice, "GET", MEMORIES))["memories"]
    assert sorted((m["content"], m["persona_id"], m["source"]) for m in listed) == [
        ("Call me Ali.", None, "user"),
        ("I keep a boat in Lisbon.", sailor["id"], "user"),
    ]
    boat = next(m for m in listed if m["persona_id"] == sailor["id"])

    # Past 1,000 characters the counter warns, and the server's 400 names `content`, marked on the box.
    await page.get_by_label("New memory").fill("x" * 1001)
    await expect(page.get_by_test_id("memory-count")).to_have_text("1,001 of 1,000 characters")
    await page.get_by_role("button", name="Add memory").click()
    banner = page.get_by_test_id("error")
    await expect(banner).to_contain_text("Could not add the memory (400")
    await expect(banner).to_contain_text("Field: content")
    await expect(page.get_by_label("New memory")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#memory-content-error")).to_be_visible()
    assert (await api(base_url, alice, "GET", MEMORIES))["total"] == 2

    # Edited in place: a blank text is refused where it is typed, a real one is saved with PATCH.
    await page.get_by_role("button", name="Edit memory 2").click()
    box = page.get_by_label("Memory 2", exact=True)
    await expect(box).to_have_value("I keep a boat in Lisbon.")
    await box.fill("   ")
    await page.get_by_role("button", name="Update memory 2").click()
    await expect(banner).to_contain_text("Could not change the memory (400")
    await expect(banner).to_contain_text("Field: content")
    await expect(box).to_have_attribute("aria-invalid", "true")
    await box.fill("I keep a boat in Porto.")
    await page.get_by_role("button", name="Update memory 2").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("Memory updated.")
    await expect(memories.last.get_by_test_id("memory-content")).to_have_text("I keep a boat in Porto.")
    await expect(banner).to_be_hidden()
    edited = (await api(base_url, alice, "GET", f"{MEMORIES}?persona_id={sailor['id']}"))["memories"]
    assert [(m["id"], m["content"]) for m in edited] == [(boat["id"], "I keep a boat in Porto.")]

    await add("Allergic to peanuts.", cook["name"])
    await add("Prefers the night watch.", sailor["name"])
    await expect(summary).to_have_text("4 memories")

    # Filtered by persona: only its own, and a memory added now is for it.
    await page.get_by_label("Filter by persona").select_option(label=sailor["name"])
    await expect(memories).to_have_count(2)
    await expect(summary).to_have_text(f"2 memories for {sailor['name']}")
    await expect(page.get_by_label("Remembered by")).to_have_value(sailor["id"])

    # Delete one, then all of the persona's (after a confirm): the cook's and the persona-wide one stay.
    await page.get_by_role("button", name="Delete memory 1").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("Memory deleted.")
    await expect(memories).to_have_count(1)
    assert [m["content"] for m in (await api(base_url, alice, "GET", MEMORIES))["memories"]] == [
        "Allergic to peanuts.",
        "Call me Ali.",
        "I keep a boat in Porto.",
    ]
    await page.get_by_role("button", name=f"Delete all for {sailor['name']}").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("1 memory deleted.")
    await expect(summary).to_have_text(f"No memories for {sailor['name']} yet.")
    left = (await api(base_url, alice, "GET", MEMORIES))["memories"]
    assert sorted(m["content"] for m in left) == ["Allergic to peanuts.", "Call me Ali."]

    # The user's own switch, off and on again.
    await page.get_by_label("Personas may remember me").uncheck()
    await expect(page.get_by_test_id("memory-switch-status")).to_contain_text("Off: no persona reads your memories")
    assert (await api(base_url, alice, "GET", f"{MEMORIES}/settings"))["enabled"] is False
    await page.reload()
    await page.get_by_role("tab", name="Memory").click()
    await expect(page.get_by_test_id("memory-switch-status")).to_contain_text("Off:")
    await expect(page.get_by_label("Personas may remember me")).not_to_be_checked()
    await page.get_by_label("Personas may remember me").check()
    await expect(page.get_by_test_id("memory-switch-status")).to_contain_text("On:")
    assert (await api(base_url, alice, "GET", f"{MEMORIES}/settings"))["enabled"] is True

    # Delete all: every memory of hers.
    await expect(summary).to_have_text("2 memories")
    await page.get_by_role("button", name="Delete all", exact=True).click()
    await expect(summary).to_have_text("No memories yet.")
    assert (await api(base_url, alice, "GET", MEMORIES))["total"] == 0

    # Another key sees its own memories only.
    await api(base_url, alice, "POST", MEMORIES, {"content": "Alice's secret."})
    await page.get_by_label("API key").fill(bob.key)
    await page.get_by_role("button", name="Use key").click()
    await expect(summary).to_have_text("No memories yet.")
    await expect(page.get_by_test_id("memory-list")).not_to_contain_text("secret")


async def test_memory_settings_are_saved_with_the_persona_and_render_shows_the_memories_a_turn_uses(
    page, base_url, alice
):
    persona = await make_persona(base_url, alice, model_settings={"context_window": 4096, "summaries": False})
    own = await api(
        base_url, alice, "POST", MEMORIES, {"content": "Keeps bees on her roof.", "persona_id": persona["id"]}
    )
    wide = await api(base_url, alice, "POST", MEMORIES, {"content": "Prefers short answers."})
    own_id, wide_id = own["memory"]["id"], wide["memory"]["id"]
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await expect(page.get_by_label("Remembers its users")).not_to_be_checked()
    await expect(page.get_by_label("Learns from chats")).not_to_be_checked()
    await expect(page.get_by_label("Memory budget (tokens)")).to_have_value("512")
    await expect(page.get_by_label("Most memories per user")).to_have_value("100")
    render = page.get_by_role("button", name="Render", exact=True)
    await render.click()
    await expect(page.get_by_test_id("render-memories")).to_contain_text("does not remember its users")
    await expect(page.get_by_test_id("memory-decision")).to_have_count(0)

    # Switched on in the editor, the draft renders with the memories for all personas only, and says why.
    await page.get_by_label("Remembers its users").check()
    await expect(page.get_by_test_id("editor-status")).to_contain_text("unsaved changes")
    await render.click()
    await expect(page.get_by_test_id("render-meta")).to_contain_text("(editor draft)")
    await expect(page.get_by_test_id("memory-draft-note")).to_be_visible()
    await expect(page.get_by_test_id("memory-decision")).to_have_count(1)
    await expect(page.locator(f'[data-testid="memory-decision"][data-memory-id="{wide_id}"]')).to_contain_text(
        "“Prefers short answers.”"
    )

    # Numbers the page cannot read are named before anything is sent; those the server refuses are marked too.
    budget = page.get_by_label("Memory budget (tokens)")
    await budget.fill("lots")
    await render.click()
    banner = page.get_by_test_id("error")
    await expect(banner).to_contain_text("model_settings.memory.token_budget must be a whole number")
    await expect(budget).to_have_attribute("aria-invalid", "true")
    await budget.fill("0")
    await page.get_by_role("button", name="Save").click()
    await expect(banner).to_contain_text("Could not save (400")
    await expect(banner).to_contain_text("Field: model_settings.memory.token_budget")
    await expect(budget).to_have_attribute("aria-invalid", "true")

    await budget.fill("300")
    await page.get_by_label("Most memories per user").fill("20")
    await page.get_by_label("Learns from chats").check()
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 2 · private")
    settings = (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}"))["persona"]["model_settings"]
    assert settings["memory"] == {"enabled": True, "extract": True, "token_budget": 300, "max_items": 20}
    # The settings the editor has no input for are saved as they were loaded.
    assert (settings["context_window"], settings["summaries"]) == (4096, False)

    # The saved persona's render lists both memories as used, with their text, and puts them in the prompt.
    await render.click()
    await expect(page.get_by_test_id("render-meta")).to_contain_text("v2 (saved)")
    await expect(page.get_by_test_id("memory-decision")).to_have_count(2)
    await expect(page.get_by_test_id("memory-draft-note")).to_have_count(0)
    for memory_id, text, whose in (
        (own_id, "Keeps bees on her roof.", "this persona"),
        (wide_id, "Prefers short answers.", "all personas"),
    ):
        decision = page.locator(f'[data-testid="memory-decision"][data-memory-id="{memory_id}"]')
        await expect(decision.get_by_test_id("memory-outcome")).to_have_text("IN")
        await expect(decision.get_by_test_id("memory-reason")).to_have_text("fits")
        await expect(decision).to_contain_text(f"“{text}”")
        await expect(decision).to_contain_text(whose)
    await expect(page.get_by_test_id("render-system-prompt")).to_contain_text("Keeps bees on her roof.")
    memory_row = page.locator('[data-testid="render-section"][data-kind="memory"]')
    await expect(memory_row.locator("th")).to_have_text("Memory")
    await expect(memory_row.locator("td").last).to_have_text("2")

    # With her switch off (in the Memory panel), no memory is considered. (The panel reads the switch when it
    # opens: until then the box is unticked, and unticking it would do nothing.)
    await page.get_by_role("tab", name="Memory").click()
    await expect(page.get_by_test_id("memory-switch-status")).to_contain_text("On:")
    await page.get_by_label("Personas may remember me").uncheck()
    await expect(page.get_by_test_id("memory-switch-status")).to_contain_text("Off:")
    await page.get_by_role("tab", name="Render").click()
    await render.click()
    await expect(page.get_by_test_id("render-memories")).to_contain_text("No memory of yours was considered")
    await expect(page.get_by_test_id("render-system-prompt")).not_to_contain_text("bees")

    # A fresh load shows the settings as saved.
    await page.reload()
    await expect(page.locator("#persona-list button.persona").first).to_be_visible()
    await pick(page, persona)
    await expect(page.get_by_label("Remembers its users")).to_be_checked()
    await expect(page.get_by_label("Memory budget (tokens)")).to_have_value("300")
    await expect(page.get_by_test_id("editor-status")).to_have_text("saved · version 2 · private")


async def test_a_memory_learned_in_a_kept_chat_is_listed_as_learned_and_used_by_the_next_turn(
    page, base_url, alice, screenshots
):
    settings = {"provider": "echo", "memory": {"enabled": True, "extract": True}}
    persona = await make_persona(base_url, alice, name="Echo " + os.urandom(4).hex(), model_settings=settings)
    await api(base_url, alice, "POST", MEMORIES, {"content": "Likes answers in French."})
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_role("tab", name="Chat").click()
    await page.get_by_label("Keep the conversation").check()
    await page.get_by_label("Your message").fill("Please remember that I sail on Sundays.")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-status").last).to_contain_text("finished: stop")

    async def learned() -> bool:
        listed = (await api(base_url, alice, "GET", f"{MEMORIES}?persona_id={persona['id']}"))["memories"]
        return [(m["content"], m["source"]) for m in listed] == [("I sail on Sundays", "extracted")]

    assert await eventually(learned), "the echo provider's extraction wrote nothing"
    await page.get_by_role("tab", name="Memory").click()
    memories = page.get_by_test_id("memory")
    await expect(memories).to_have_count(2)
    row = memories.filter(has_text="I sail on Sundays")
    await expect(row).to_have_attribute("data-source", "extracted")
    await expect(row.get_by_test_id("memory-meta")).to_contain_text(f"{persona['name']} · learned from a chat")
    await page.get_by_label("New memory").fill("My name is pronounced AL-iss.")
    await page.get_by_role("button", name="Add memory").click()
    await expect(memories).to_have_count(3)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=screenshots / "playground-memory.png")

    # The next turn would be given all three, the learned one among them.
    await page.get_by_role("tab", name="Render").click()
    await page.get_by_label("In the chat's kept conversation", exact=False).uncheck()
    await page.get_by_role("button", name="Render", exact=True).click()
    await expect(page.get_by_test_id("memory-decision")).to_have_count(3)
    decision = page.get_by_test_id("memory-decision").filter(has_text="I sail on Sundays")
    await expect(decision.get_by_test_id("memory-outcome")).to_have_text("IN")
    await expect(decision).to_contain_text("this persona")
    await expect(page.get_by_test_id("render-system-prompt")).to_contain_text("I sail on Sundays")


async def test_render_says_which_memories_were_left_out_past_the_budget(page, base_url, alice):
    persona = await make_persona(base_url, alice, model_settings={"memory": {"enabled": True, "token_budget": 40}})
    for n in range(12):
        await api(
            base_url,
            alice,
            "POST",
            MEMORIES,
            {"content": f"Weather fact {n}: rain expected.", "persona_id": persona["id"]},
        )
    harbour = await api(
        base_url,
        alice,
        "POST",
        MEMORIES,
        {"content": "Alice keeps a sailing boat in the harbour.", "persona_id": persona["id"]},
    )
    newest = await api(
        base_url, alice, "POST", MEMORIES, {"content": "Alice started a new job.", "persona_id": persona["id"]}
    )
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await page.get_by_label("Message to render").fill("Is my boat safe at the harbour?")
    await page.get_by_role("button", name="Render", exact=True).click()
    decisions = page.get_by_test_id("memory-decision")
    await expect(decisions).to_have_count(14)
    for memory, reason, words in ((harbour, "relevant", "most relevant"), (newest, "newest", "among the newest")):
        decision = page.locator(f'[data-testid="memory-decision"][data-memory-id="{memory["memory"]["id"]}"]')
        await expect(decision.get_by_test_id("memory-outcome")).to_have_text("IN")
        await expect(decision.get_by_test_id("memory-reason")).to_have_text(reason)
        await expect(decision).to_contain_text(words)
        await expect(decision).to_contain_text(memory["memory"]["content"])
    left_out = decisions.filter(has_text="Weather fact")
    await expect(left_out).to_have_count(12)
    for i in range(12):
        await expect(left_out.nth(i).get_by_test_id("memory-outcome")).to_have_text("OUT")
        await expect(left_out.nth(i).get_by_test_id("memory-reason")).to_have_text("budget")
    await expect(left_out.first).to_contain_text("over the memory budget")
    await expect(page.locator('[data-testid="render-section"][data-kind="memory"] td').last).to_have_text("2")
