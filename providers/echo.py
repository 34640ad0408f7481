"""The built-in offline provider: deterministic answers, no network."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from core.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers.base import ChatMessage, ProviderConfig, ProviderRequest

__all__ = ["DEFAULT_MODEL", "EchoProvider"]

DEFAULT_MODEL = "echo-1"
PREFIX = "[echo] "

_TOOL_COMMAND = re.compile(r"/tool\s+(\S+)\s*(.*)", re.DOTALL)
_WORD_PIECES = re.compile(r"\S+\s*|\s+")


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _last_user_message(messages: tuple[ChatMessage, ...]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            text = message.content or ""
            if message.images:
                # Echo cannot look at images; it says how many it was given, so a client can see they came.
                count = len(message.images)
                seen = f"[{count} image{'s' if count != 1 else ''}]"
                text = f"{text} {seen}" if text else seen
            return text
    return ""


def _tool_results(messages: tuple[ChatMessage, ...]) -> str:
    """The tool results that end the conversation (after the model's calls), each as ``tool NAME said: RESULT``
    (the name from the call it answers), joined; empty if the conversation ends otherwise."""
    results: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.append(message)
    names = {
        call.id: call.name
        for message in messages[: len(messages) - len(results)]
        if message.role == "assistant"
        for call in message.tool_calls or ()
    }
    said = (f"tool {names.get(r.tool_call_id or '', 'call')} said: {r.content or ''}" for r in reversed(results))
    return "; ".join(said)


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    # A message's ``images`` are shown only when it has some.
    if not message.get("images"):
        message.pop("images", None)
    return message


class EchoProvider:
    """Answers ``"[echo] " + the last user message``, streamed a word at a time.

    Usage counts whitespace-separated words: the system prompt and every message in, the answer
    out. A user message with images is answered with their number after its text (``"[echo] What is
    this? [2 images]"``). When the request offers tools and the latest message is the user's and reads
    ``/tool NAME {json}``, it calls tool NAME with those arguments instead (a fresh call id each
    time), so tool round trips can be tried offline; once the results come back it answers with
    them in text (``"[echo] tool NAME said: RESULT"``, one per result), which ends the loop.
    ``delay`` (seconds) is slept before each piece, to imitate a slow model.
    """

    kind = "echo"

    def __init__(self, config: ProviderConfig | None = None, *, delay: float = 0.0) -> None:
        config = config or ProviderConfig(name="echo", kind="echo")
        self.name = config.name
        self.default_model = config.default_model or DEFAULT_MODEL
        self.delay = delay

    def __repr__(self) -> str:
        return f"EchoProvider(name={self.name!r})"

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        """The request as echo sees it: ``{"model", "system", "messages", "tools"}`` plus the
        sampling parameters that are set, all in the provider-neutral shapes of ``providers.base``."""
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "system": request.system,
            # a JSON round trip gives plain lists and dicts, as the body of an HTTP call would be
            "messages": [_plain(m) for m in msgspec.json.decode(msgspec.json.encode(request.messages))],
            "tools": msgspec.json.decode(msgspec.json.encode(request.tools)),
        }
        for key in ("temperature", "top_p", "max_tokens"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        input_tokens = _words(request.system) + sum(_words(m.content) for m in request.messages)
        last = _last_user_message(request.messages)
        latest = request.messages[-1] if request.messages else None
        asked = latest is not None and latest.role == "user" and bool(request.tools)
        command = _TOOL_COMMAND.fullmatch(last.strip()) if asked else None
        if command and command.group(1) in {t.name for t in request.tools}:
            await self._pause()
            arguments = command.group(2).strip() or "{}"
            call_id = f"call_echo_{secrets.token_hex(12)}"
            yield ToolCallDelta(index=0, id=call_id, name=command.group(1), arguments=arguments)
            yield Usage(input_tokens=input_tokens, output_tokens=_words(arguments))
            yield Finish(finish_reason="tool_calls")
            return
        results = _tool_results(request.messages)
        answer = PREFIX + (results or last)
        for piece in _WORD_PIECES.findall(answer):
            await self._pause()
            yield TextDelta(content=piece)
        yield Usage(input_tokens=input_tokens, output_tokens=_words(answer))
        yield Finish(finish_reason="stop")

    async def _pause(self) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)

    async def aclose(self) -> None:
        return None
