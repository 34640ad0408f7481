"""docs/examples/follow_answer.js in a real browser: EventSource resumes a dropped answer by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.proxy import TcpProxy
from tests.sse import parse_sse
from tests.test_playground import browser, page, pytestmark  # noqa: F401  (Chromium fixtures and skip rules)
from tests.waiting import eventually

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "follow_answer.js"
CHAT = "/api/v1/chat"
WORDS = tuple(f"w{n} " for n in range(30))


async def test_event_source_reconnects_with_last_event_id_and_misses_nothing(llm_app: Any, page, fake_llm, alice):  # noqa: F811
    base: str = llm_app.state.base_url
    port = int(base.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)  # the browser's network, which the test can cut
    await proxy.start()
    try:
        fake_llm.script(chunks=WORDS, chunk_delay=0.1)
        body = {"message": "a long answer", "stream": True, "resumable": True}
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            async with http.stream("POST", CHAT, json=body, headers=alice.headers) as r:
                text = ""
                async for chunk in r.aiter_text():
                    text += chunk
                    if parse_sse(text)[0]:
                        break
            start = parse_sse(text)[0][0].json
            origin = f"http://127.0.0.1:{proxy.port}"
            await page.goto(f"{origin}/health")
            await page.add_script_tag(content=EXAMPLE.read_text())
            following = asyncio.ensure_future(
                page.evaluate("([key, id]) => followAnswer(location.origin, key, id)", [alice.key, start["message_id"]])
            )
            # Some of the answer's events have gone through the proxy to the browser (the answer takes 3 s).
            assert await eventually(lambda: proxy.returned.count(b"event: content") >= 3, within=10)
            await proxy.cut()  # the network drops mid-answer
            await proxy.start()
            result = await asyncio.wait_for(following, 30)
            conversation = await http.get(f"{CHAT}/conversations/{start['conversation_id']}", headers=alice.headers)
        stored = conversation.json()["messages"][-1]
        assert result["connections"] >= 2, "EventSource reconnected after the cut"
        assert result["text"] == stored["content"] == "".join(WORDS), "no event missed, none repeated"
        assert stored["status"] == "complete"
    finally:
        await proxy.cut()
