"""The playground's Insights tab in Chromium (contract section 16): a persona's real turns (three versions, the
last one rolled out to half of its users on another model) drawn as uPlot charts, its figures the stats API's
own, its release shown and changed from the tab. Same browser, server and screenshot rules as test_playground."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from playwright.async_api import Page, expect

from tests.fakellm import Script
from tests.test_playground import (  # noqa: F401  (Chromium fixtures and skip rules)
    api,
    base_url,
    browser,
    make_persona,
    open_playground,
    page,
    pick,
    pytestmark,
    screenshots,
)
from tests.waiting import eventually

PERSONAS = "/api/v1/chat/personas"
USERS = 8

# Records are written by the second; the turns of the first two versions are then moved back a few days, as if
# they had been sent then, so the charts have a week to show. Feedback keeps its turn's time, so it moves too.
BACKDATE = """
UPDATE turns SET created_at = created_at - make_interval(days => $2 + abs(hashtext(id::text)) % 3)
WHERE persona_id = $1 AND persona_version = $3"""
FEEDBACK_TIMES = """
UPDATE turn_feedback f SET turn_created_at = t.created_at FROM turns t WHERE t.id = f.turn_id AND f.persona_id = $1"""


def _ms(value: float | None) -> str:
    """A latency as the tab writes it: at most one decimal, thousands separated."""
    if value is None:
        return "\u2013"
    text = f"{value:,.1f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " ms"


def _percent(part: int, whole: int) -> str:
    return f"{round(100 * part / whole)}%" if whole else "\u2013"


async def _chat(http: httpx.AsyncClient, account: Any, persona_id: str, message: str) -> tuple[str, int]:
    r = await http.post("/api/v1/chat", json={"message": message, "persona_id": persona_id}, headers=account.headers)
    assert r.status_code == 200, r.text
    return r.headers["x-persona-turn-id"], r.json()["persona"]["version"]


async def _rows(http: httpx.AsyncClient, account: Any, persona_id: str, by: str) -> list[dict[str, Any]]:
    r = await http.get(f"{PERSONAS}/{persona_id}/stats", params={"by": by}, headers=account.headers)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["rows"]
    return rows


async def seed(url: str, database_url: str, alice: Any, make_user: Any, fake_llm: Any) -> dict[str, Any]:
    """Real turns through /api/v1/chat: v1 and v2 on the echo provider, then production pinned to v2 and v3 (the
    OpenAI provider, i.e. the fake LLM, slower to its first token and with a prompt cache) rolled out to 50%."""
    persona = await make_persona(url, alice, visibility="public", model_settings={"provider": "echo"})
    pid = persona["id"]
    users = [alice, *[await make_user("reader") for _ in range(USERS - 1)]]
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for user in users:
            turn, _ = await _chat(http, user, pid, "What is the weather like?")
            sent += 1
            if user is alice:
                await api(url, alice, "POST", f"/api/v1/turns/{turn}/feedback", {"rating": -1})
        await api(url, alice, "PUT", f"{PERSONAS}/{pid}", {"system_prompt": "You are {{persona_name}}. Be brief."})
        for i, user in enumerate(users):
            turn, _ = await _chat(http, user, pid, "And tomorrow?")
            sent += 1
            await api(url, user, "POST", f"/api/v1/turns/{turn}/feedback", {"rating": 1 if i % 2 else -1})
        await api(url, alice, "PUT", f"{PERSONAS}/{pid}/labels/production", {"version": 2})
        await api(
            url, alice, "PUT", f"{PERSONAS}/{pid}", {"model_settings": {"provider": "openai", "temperature": 0.3}}
        )
        await api(url, alice, "PUT", f"{PERSONAS}/{pid}/rollout", {"version": 3, "percent": 50})
        fake_llm.default = Script(
            chunks=("Sunny", " all", " week."), first_byte_delay=0.04, cached_tokens=30, input_tokens=40
        )
        versions: dict[int, int] = {}
        # Each user keeps their variant; new users join until both variants have served (8 users leave one of
        # them empty once in 128 runs).
        while set(versions) != {2, 3}:
            for user in users:
                for message in ("Rain?", "Wind?"):
                    turn, version = await _chat(http, user, pid, message)
                    sent += 1
                    versions[version] = versions.get(version, 0) + 1
                    if version == 3 and message == "Rain?":
                        await api(url, user, "POST", f"/api/v1/turns/{turn}/feedback", {"rating": 1})
            users = [await make_user("reader")]

        async def recorded() -> bool:
            return sum(row["turns"] for row in await _rows(http, alice, pid, "version")) == sent

        assert await eventually(recorded)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(BACKDATE, persona["id"], 4, 1)
            await conn.execute(BACKDATE, persona["id"], 1, 2)
            await conn.execute(FEEDBACK_TIMES, persona["id"])
        finally:
            await conn.close()
        by = {by: await _rows(http, alice, pid, by) for by in ("version", "variant", "day")}
    return {"persona": persona, "sent": sent, **by}


async def insights_tab(tab: Page) -> None:
    await tab.get_by_role("tab", name="Insights").click()


async def test_the_insights_tab_charts_real_turns_and_changes_the_release(
    page,  # noqa: F811
    base_url,  # noqa: F811
    database_url,
    alice,
    make_user,
    fake_llm,
    screenshots,  # noqa: F811
):
    seeded = await seed(base_url, database_url, alice, make_user, fake_llm)
    persona, by_version, by_variant = seeded["persona"], seeded["version"], seeded["variant"]
    assert [row["key"] for row in by_version] == [1, 2, 3]
    assert len(seeded["day"]) >= 3  # the week has turns on several days

    await page.set_viewport_size({"width": 1920, "height": 1080})
    # Nothing the page's policy refuses (uPlot styles its nodes through the DOM, never inline markup), and
    # nothing fetched from elsewhere.
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Refused" in m.text or "Policy" in m.text else None)
    failed: list[str] = []
    # (A persona without an avatar answers its avatar with a 404: the editor shows its initial.)
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 and "/avatar" not in r.url else None)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    await open_playground(page, base_url, alice.key)
    latest = await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}")
    await page.locator(f'#persona-list [data-persona-id="{persona["id"]}"]').click()
    await expect(page.locator("#editor-title")).to_have_text(latest["persona"]["name"])
    await insights_tab(page)

    # The summary counts every turn of the week, and its tokens.
    summary = page.get_by_test_id("insights-summary")
    total = sum(row["turns"] for row in by_version)
    await expect(summary).to_contain_text(f"{total} turns from ")
    input_tokens = sum(row["input_tokens"] for row in by_version)
    cached = sum(row["cached_input_tokens"] for row in by_version)
    await expect(summary).to_contain_text(f"{input_tokens:,} input tokens ({_percent(cached, input_tokens)} cached)")

    # Real charts: a canvas each, with the series named in their legends.
    for chart in ("chart-turns", "chart-ttft", "chart-tokens", "chart-feedback", "chart-variants"):
        await expect(page.get_by_test_id(chart).locator("canvas")).to_have_count(1)
    legend = page.get_by_test_id("chart-turns").locator(".u-legend .u-series .u-label")
    await expect(legend).to_have_text(["day", "v1", "v2", "v3"])
    await expect(page.get_by_test_id("chart-ttft").locator(".u-legend .u-label")).to_have_text(["day", "p50", "p95"])
    await expect(page.get_by_test_id("chart-tokens").locator(".u-legend .u-label")).to_have_text(
        ["day", "input", "cached input", "output"]
    )

    # The table by version is the API's rows.
    table = page.get_by_test_id("insights-versions")
    for row in by_version:
        line = table.locator(f'tr[data-key="v{row["key"]}"]')
        expected = {
            "turns": f"{row['turns']:,}",
            "users": f"{row['users']:,}",
            "ttft_ms_p50": _ms(row["ttft_ms_p50"]),
            "ttft_ms_p95": _ms(row["ttft_ms_p95"]),
            "input_tokens": f"{row['input_tokens']:,}",
            "output_tokens": f"{row['output_tokens']:,}",
            "cached_share": _percent(row["cached_input_tokens"], row["input_tokens"]),
            "feedback_up": str(row["feedback_up"]),
            "feedback_down": str(row["feedback_down"]),
            "errors": str(row["errors"]),
        }
        for field, text in expected.items():
            await expect(line.locator(f'td[data-field="{field}"]')).to_have_text(text)
    v3 = next(row for row in by_version if row["key"] == 3)
    assert v3["cached_input_tokens"] > 0 and v3["ttft_ms_p50"] >= 40  # the rollout's model: cached, and slower

    # The rollout against production, side by side.
    variants = page.get_by_test_id("insights-variants")
    await expect(variants.locator("thead th")).to_have_text(["", "production", "rollout (v3, 50%)"])
    counts = {row["key"]: row for row in by_variant}
    turns_line = variants.locator('tr[data-metric="turns"] td')
    await expect(turns_line).to_have_text([str(counts["production"]["turns"]), str(counts["rollout"]["turns"])])
    await expect(variants.locator('tr[data-metric="ttft_ms_p50"] td')).to_have_text(
        [_ms(counts["production"]["ttft_ms_p50"]), _ms(counts["rollout"]["ttft_ms_p50"])]
    )

    # The release: production pinned to v2, v3 rolled out to half of the users.
    await expect(page.get_by_test_id("release-labels")).to_contain_text("production → v2 pinned")
    await expect(page.get_by_test_id("release-rollout")).to_have_text(
        "Rollout: v3 to 50% of users, production (v2) to the rest."
    )
    await page.locator(".workbench").screenshot(path=screenshots / "insights.png")
    assert console == [] and failed == [], (console, failed)
    assert requested and all(u.startswith(base_url) for u in requested), requested

    # Down to 10% from the tab, then promoted: pinning production to v3 ends the rollout.
    await page.get_by_label("to percent of users").fill("10")
    await page.get_by_role("button", name="Set rollout").click()
    await expect(page.get_by_test_id("release-rollout")).to_have_text(
        "Rollout: v3 to 10% of users, production (v2) to the rest."
    )
    rollout = await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}/rollout")
    assert rollout["rollout"] == {"version": 3, "percent": 10}
    await page.get_by_label("Pin production to").select_option("3")
    await page.get_by_role("button", name="Pin production").click()
    await expect(page.get_by_test_id("release-rollout")).to_have_text("No rollout: every user gets production.")
    await expect(page.get_by_test_id("release-labels")).to_contain_text("production → v3 pinned")
    labels = await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}/labels")
    assert labels["labels"]["production"] == {"version": 3, "pinned": True}
    assert (await api(base_url, alice, "GET", f"{PERSONAS}/{persona['id']}/rollout"))["rollout"] is None
    # The turns the rollout served are still compared with production's over the range.
    await expect(variants.locator("thead th")).to_have_text(["", "production", "rollout (ended)"])

    # Following the latest save again.
    await page.get_by_role("button", name="Follow the latest save").click()
    await expect(page.get_by_test_id("release-labels")).to_contain_text("production → v3 follows the latest save")


async def test_the_range_picks_the_days_and_a_wrong_one_is_named(page, base_url, alice, bob):  # noqa: F811
    persona = await make_persona(base_url, alice, visibility="public", model_settings={"provider": "echo"})
    quiet = await make_persona(base_url, alice)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await _chat(http, alice, persona["id"], "Hello")

        async def recorded() -> bool:
            return bool(await _rows(http, alice, persona["id"], "version"))

        assert await eventually(recorded)
    await open_playground(page, base_url, alice.key)
    await pick(page, persona)
    await insights_tab(page)
    summary = page.get_by_test_id("insights-summary")
    await expect(summary).to_contain_text("1 turn from ")
    # The default range is the last seven days, today included.
    today = datetime.now(UTC).date()
    await expect(page.get_by_label("From", exact=True)).to_have_value((today - timedelta(days=6)).isoformat())
    await expect(page.get_by_label("To", exact=True)).to_have_value(today.isoformat())
    await expect(page.get_by_test_id("release-rollout")).to_have_text("No rollout: every user gets production.")
    await expect(page.get_by_test_id("insights-variants")).to_be_hidden()

    # Another persona in the editor, the tab open: its own figures (none), not the first one's.
    await pick(page, quiet)
    await expect(summary).to_have_text(re.compile(r"^No turns from "))
    await expect(page.locator("#insights-body")).to_be_hidden()
    await pick(page, persona)
    await expect(summary).to_contain_text("1 turn from ")

    # A week long ago: no turns, no charts.
    await page.get_by_label("From", exact=True).fill("2020-01-01")
    await page.get_by_label("To", exact=True).fill("2020-01-07")
    await page.get_by_role("button", name="Show", exact=True).click()
    await expect(summary).to_have_text("No turns from 2020-01-01 to 2020-01-07 (UTC).")
    await expect(page.locator("#insights-body")).to_be_hidden()

    # A range that ends before it starts is refused, naming the day to change.
    await page.get_by_label("From", exact=True).fill("2020-02-01")
    await page.get_by_role("button", name="Show", exact=True).click()
    await expect(page.get_by_test_id("error")).to_contain_text("`from` is after `to`")
    await expect(page.locator("#error-field")).to_have_text("Field: from")

    # Someone who may chat with the persona but not edit it sees no figures of it.
    await open_playground(page, base_url, bob.key)
    await page.locator(f'#persona-list [data-persona-id="{persona["id"]}"]').click()
    await insights_tab(page)
    await expect(summary).to_have_text("Only the persona\u2019s owner or an admin sees how its turns went.")
    await expect(page.get_by_test_id("insights-range")).to_be_hidden()
