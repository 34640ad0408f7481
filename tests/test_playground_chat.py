"""The playground's chat in Chromium: Markdown answers made safe, stored conversations reopened, a persona
switch starting afresh, Regenerate and Stop. Same browser, server and screenshot rules as test_playground."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Page, expect

from tests.test_playground import (  # noqa: F401  (Chromium fixtures and skip rules)
    api,
    base_url,
    browser,
    conversation,
    make_persona,
    open_playground,
    page,
    pick,
    pytestmark,
    screenshots,
    send,
)
from tests.waiting import eventually

CONVERSATIONS = "/api/v1/chat/conversations"

MARKDOWN = (
    "## Packing list\n\n",
    "Bring **two** ropes and a `compass`:\n\n",
    "- a lantern\n- dry socks\n\n",
    "```\nknot --bowline\n```\n\n",
    'Tricks: <img src="x" onerror="window.__pwned = \'img\'">',
    "<script>window.__pwned = 'script'</script>",
    ' <a href="/health" onclick="window.__pwned = \'click\'">html link</a>',
    ' <iframe src="/health"></iframe> <style>body { display: none }</style>',
    " [click me](javascript:window.__pwned='link') ![pic](javascript:window.__pwned='pic')",
    " and [the map](/playground/).",
)


async def chat_tab(tab: Page) -> None:
    await tab.get_by_role("tab", name="Chat").click()


async def test_answers_show_as_markdown_and_markup_in_them_never_runs(page, base_url, alice, fake_llm, screenshots):  # noqa: F811
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await chat_tab(page)
    fake_llm.script(chunks=MARKDOWN, chunk_delay=0.05)
    await page.get_by_label("Your message").fill("What do I pack?")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-status").last).to_contain_text("finished: stop")
    answer = page.get_by_test_id("chat-answer").last

    # Markdown: a heading, bold, inline code, a list, a code block, a link.
    await expect(answer.locator("h2")).to_have_text("Packing list")
    await expect(answer.locator("strong")).to_have_text("two")
    await expect(answer.locator("p code")).to_have_text("compass")
    await expect(answer.locator("li")).to_have_text(["a lantern", "dry socks"])
    await expect(answer.locator("pre code")).to_have_text("knot --bowline\n")
    safe = answer.get_by_role("link", name="the map")
    await expect(safe).to_have_attribute("href", "/playground/")
    await expect(safe).to_have_attribute("rel", "noopener noreferrer")

    # HTML the model wrote is shown as the text it is, never made into elements.
    await expect(answer.locator("script, iframe, style")).to_have_count(0)
    await expect(answer.get_by_role("link", name="html link")).to_have_count(0)
    await expect(answer).to_contain_text("""<img src="x" onerror="window.__pwned = 'img'">""")
    await expect(answer).to_contain_text("<script>window.__pwned = 'script'</script>")
    await expect(answer).to_contain_text("<style>body { display: none }</style>")
    # Markdown's own link and image to javascript: URLs lose them (DOMPurify): clicking does nothing.
    dangerous = answer.locator("a", has_text="click me")
    assert await dangerous.get_attribute("href") is None
    urls = await answer.evaluate("a => [...a.querySelectorAll('[href], [src]')].map(e => e.href || e.src)")
    assert urls and not any(u.strip().lower().startswith("javascript:") for u in urls), urls
    assert await answer.locator("[onerror], [onclick]").count() == 0
    await dangerous.click()
    assert await page.evaluate("window.__pwned") is None
    await expect(page.locator("body")).to_be_visible()
    await page.screenshot(path=screenshots / "playground-markdown.png")


async def test_a_persona_switch_starts_a_new_conversation(page, base_url, alice, fake_llm):  # noqa: F811
    first = await make_persona(base_url, alice)
    second = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, first)
    await chat_tab(page)
    log = page.get_by_test_id("chat-log").locator("li")

    # A preview's turns are the persona's: picking another leaves none of them on screen.
    await send(page, "Hello", "Hello from the fake model.")
    await expect(log).to_have_count(1)
    await pick(page, second)
    await expect(log).to_have_count(0)

    # A kept conversation too; the next message starts another one, with the new persona.
    await page.get_by_label("Keep the conversation").check()
    await send(page, "Hello again", "Hello from the fake model.")
    kept, _ = await conversation(base_url, alice, page)
    await pick(page, first)
    await expect(log).to_have_count(0)
    await expect(page.get_by_test_id("chat-conversation")).to_have_text(
        "A new conversation starts with the next message."
    )
    await send(page, "And you?", "Hello from the fake model.")
    other, messages = await conversation(base_url, alice, page)
    assert other != kept and messages == ["And you?"]
    stored = await api(base_url, alice, "GET", f"{CONVERSATIONS}/{other}")
    assert stored["conversation"]["persona_id"] == first["id"]

    # Saving the editor's persona is no switch: the turns stay.
    await page.get_by_label("Description").fill("Changed, then saved.")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("editor-status")).to_have_text(re.compile("saved · version 2"))
    await expect(log).to_have_count(1)


async def test_a_stored_conversation_is_listed_reopened_and_continued(page, base_url, alice, fake_llm, screenshots):  # noqa: F811
    sailor = await make_persona(base_url, alice)
    cook = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, sailor)
    await chat_tab(page)
    await page.get_by_label("Keep the conversation").check()
    fake_llm.script(chunks=("Ahoy, ", "**Ann**."))
    await send(page, "I am Ann, and I sail.", "Ahoy, Ann.")
    fake_llm.script(chunks=("You ", "*sail*."))
    await send(page, "What do I do?", "You sail.")
    kept, _ = await conversation(base_url, alice, page)

    # Another persona in the editor: the chat starts afresh, and the list holds the stored one.
    await pick(page, cook)
    await expect(page.get_by_test_id("chat-log").locator("li")).to_have_count(0)
    await page.locator("#chat-history summary").click()
    listed = page.locator(f'#conversation-list button.conversation[data-conversation-id="{kept}"]')
    await expect(listed).to_contain_text("I am Ann, and I sail.")
    await expect(listed).to_contain_text(sailor["name"])
    await expect(page.get_by_test_id("conversation").first).to_contain_text("I am Ann, and I sail.")  # newest first

    # Reopened: its persona is back in the editor, its turns in the log as stored, in Markdown.
    await listed.click()
    await expect(page.locator("#editor-title")).to_have_text(sailor["name"])
    await expect(page.get_by_label("Keep the conversation")).to_be_checked()
    line = page.get_by_test_id("chat-conversation")
    await expect(line).to_have_attribute("data-conversation-id", kept)
    await expect(line).to_contain_text("2 turns")
    answers = page.get_by_test_id("chat-answer")
    await expect(answers).to_have_text(["Ahoy, Ann.", "You sail."])
    await expect(answers.first.locator("strong")).to_have_text("Ann")
    await expect(page.get_by_test_id("chat-status").first).to_contain_text("stored: complete")
    await expect(page.get_by_test_id("chat-meta").first).to_contain_text(f"{sailor['name']} v1 · openai/")
    await expect(listed).to_have_attribute("aria-current", "true")
    await page.screenshot(path=screenshots / "playground-conversations.png")

    # Continued: the next turn goes into it, with its earlier turns upstream.
    fake_llm.script(chunks=("Yes, ", "Ann."))
    await send(page, "Do you remember me?", "Yes, Ann.")
    same, messages = await conversation(base_url, alice, page)
    assert same == kept and messages == ["I am Ann, and I sail.", "What do I do?", "Do you remember me?"]
    upstream = [m["content"] for m in fake_llm.chat_requests()[-1].body["messages"] if m["role"] != "system"]
    assert upstream[:2] == ["I am Ann, and I sail.", "Ahoy, **Ann**."]

    # Deleted from the list: gone from the list and from the API, and the chat starts afresh.
    await page.get_by_role("button", name="Delete “I am Ann, and I sail.”").click()
    await expect(listed).to_have_count(0)
    await expect(page.get_by_test_id("chat-log").locator("li")).to_have_count(0)
    ids = [c["id"] for c in (await api(base_url, alice, "GET", f"{CONVERSATIONS}?limit=200"))["conversations"]]
    assert kept not in ids


async def test_regenerate_asks_the_last_message_again_as_a_new_turn(page, base_url, alice, fake_llm):  # noqa: F811
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await chat_tab(page)
    regenerate = page.get_by_role("button", name="Regenerate")
    await expect(regenerate).to_be_disabled()

    # A preview: asked again, answered anew.
    fake_llm.script(chunks=("Why did the ", "chicken..."))
    await send(page, "Tell me a joke", "Why did the chicken...")
    fake_llm.script(chunks=("Knock, ", "knock."))
    await regenerate.click()
    await expect(page.get_by_test_id("chat-answer")).to_have_text(["Why did the chicken...", "Knock, knock."])
    await expect(page.get_by_test_id("chat-meta").last).to_contain_text("regenerated")
    await expect(page.locator("#chat-log .question").last).to_have_text("You: Tell me a joke")
    assert fake_llm.chat_requests()[-1].body["messages"][-1] == {"role": "user", "content": "Tell me a joke"}

    # In a kept conversation the message is stored again, after the first answer.
    await page.get_by_label("Keep the conversation").check()
    await expect(regenerate).to_be_disabled()
    await send(page, "Name a knot", "Hello from the fake model.")
    fake_llm.script(chunks=("A bowline.",))
    await regenerate.click()
    await expect(page.get_by_test_id("chat-answer").last).to_have_text("A bowline.")
    _, messages = await conversation(base_url, alice, page)
    assert messages == ["Name a knot", "Name a knot"]


async def test_stop_ends_a_kept_answer_through_its_cancel_route_and_keeps_what_was_said(
    page,  # noqa: F811
    base_url,  # noqa: F811
    alice,
    fake_llm,
):
    persona = await make_persona(base_url, alice)
    cancels: list[str] = []
    page.on("request", lambda r: cancels.append(r.url) if r.url.endswith("/cancel") else None)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await chat_tab(page)
    await page.get_by_label("Keep the conversation").check()
    words = tuple(f"word{n} " for n in range(40))
    fake_llm.script(chunks=words, chunk_delay=0.2)
    await page.get_by_label("Your message").fill("Talk for a while")
    await page.get_by_role("button", name="Send").click()
    answer = page.get_by_test_id("chat-answer").last
    await expect(answer).to_contain_text("word2")
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_test_id("chat-status").last).to_have_text(
        "stopped: the answer so far is stored as incomplete"
    )
    await expect(page.get_by_test_id("error")).to_be_hidden()
    assert len(cancels) == 1 and "/api/v1/chat/messages/" in cancels[0]
    shown = await answer.inner_text()
    assert "word39" not in shown

    conversation_id, _ = await conversation(base_url, alice, page)

    async def stored() -> dict[str, Any] | None:
        messages = (await api(base_url, alice, "GET", f"{CONVERSATIONS}/{conversation_id}"))["messages"]
        return messages[-1] if messages[-1]["status"] == "incomplete" else None

    assert await eventually(stored), "the stopped answer was not stored as incomplete"
    last = await stored()
    assert last is not None and last["content"].startswith("word0 word1 word2") and "word39" not in last["content"]
    # The page is ready for the next message, and Regenerate may ask the stopped one again.
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    await expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()


async def test_stop_ends_a_preview_by_hanging_up(page, base_url, alice, fake_llm):  # noqa: F811
    persona = await make_persona(base_url, alice)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await chat_tab(page)
    fake_llm.script(chunks=tuple(f"w{n} " for n in range(40)), chunk_delay=0.2)
    await page.get_by_label("Your message").fill("Talk for a while")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-answer").last).to_contain_text("w1")
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_test_id("chat-status").last).to_have_text("stopped")
    assert "w39" not in await page.get_by_test_id("chat-answer").last.inner_text()
