"""Resume mode: streams cut by their client after a few events and resumed on a new connection.

Each round starts a resumable chat stream, reads its first ``cut_after`` events, drops the connection,
then asks ``GET /api/v1/chat/messages/{id}/events`` with ``Last-Event-ID`` on a new connection (with
``--workers 2`` and Redis, it lands on either worker). The figure is the resume latency: from sending
the reconnecting request to the first replayed event. Each round also checks the result: the events
received before and after the cut, joined, must be the stored answer, none missing and none twice.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

from bench.services import Account, ServerProcess

__all__ = ["ResumeResult", "resume_streams", "resume_table"]


@dataclass
class ResumeResult:
    workers: int
    rounds: int
    cut_after: int
    redis: bool
    ok: int = 0
    mismatched: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # Milliseconds from the reconnecting request to its first replayed event.
    latency_ms: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None


def _events(text: str) -> list[tuple[str | None, str | None, str]]:
    events = []
    for block in text.split("\n\n"):
        name = ident = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, ident, "\n".join(data)))
    return events


def _text(events: list[tuple[str | None, str | None, str]]) -> str:
    return "".join(json.loads(data)["content"] for name, _, data in events if name == "content")


async def _round(server: ServerProcess, account: Account, cut_after: int) -> float:
    body = {"message": "Tell me something long.", "stream": True, "resumable": True}
    async with httpx.AsyncClient(base_url=server.url, headers=account.headers, timeout=30) as first:
        text = ""
        async with first.stream("POST", "/api/v1/chat", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            async for chunk in response.aiter_text():
                text += chunk
                if len(_events(text)) >= cut_after + 1:  # start and the first pieces
                    break
    before = _events(text)[: cut_after + 1]
    start = json.loads(before[0][2])
    message_id, last_id = start["message_id"], before[-1][1] or ""
    # A new client: a new connection, as a phone that changed networks would open.
    async with httpx.AsyncClient(base_url=server.url, headers=account.headers, timeout=30) as second:
        sent = time.perf_counter()
        first_at = None
        rest = ""
        url = f"/api/v1/chat/messages/{message_id}/events"
        async with second.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
            async for chunk in response.aiter_text():
                rest += chunk
                if first_at is None and _events(rest):
                    first_at = time.perf_counter()
        conversation = await second.get(f"/api/v1/chat/conversations/{start['conversation_id']}")
    stored = conversation.json()["messages"][-1]["content"]
    if first_at is None or _text(before) + _text(_events(rest)) != stored:
        raise ValueError("mismatch")
    return (first_at - sent) * 1000


async def resume_streams(
    server: ServerProcess, account: Account, rounds: int, *, cut_after: int, redis: bool
) -> ResumeResult:
    result = ResumeResult(workers=server.workers, rounds=rounds, cut_after=cut_after, redis=redis)
    for _ in range(rounds):
        try:
            result.latency_ms.append(await _round(server, account, cut_after))
            result.ok += 1
        except ValueError:
            result.mismatched += 1
        except Exception as exc:
            kind = type(exc).__name__
            result.errors[kind] = result.errors.get(kind, 0) + 1
    if result.latency_ms:
        ordered = sorted(result.latency_ms)
        result.p50_ms = statistics.median(ordered)
        result.p95_ms = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        result.max_ms = ordered[-1]
    return result


def resume_table(r: ResumeResult) -> str:
    where = "Redis" if r.redis else "this process's memory"
    lines = [
        f"Resume: {r.rounds} resumable streams cut after {r.cut_after} content events and resumed with "
        f"Last-Event-ID on a new connection ({r.workers} worker(s), recordings in {where})",
        f"  resumed whole           {r.ok:>5}/{r.rounds}" + (f"   mismatched: {r.mismatched}" if r.mismatched else ""),
    ]
    if r.errors:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in r.errors.items()))
    if r.p50_ms is not None:
        lines.append(
            f"  reconnect to first replayed event: p50 {r.p50_ms:.2f} ms, p95 {r.p95_ms:.2f} ms, max {r.max_ms:.2f} ms"
        )
    return "\n".join(lines)
