"""The built-in offline provider: deterministic answers, no network."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from core.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers._schema import example_of
from providers.base import NO_OPTIONS, ChatMessage, Options, ProviderConfig, ProviderRequest, ToolChoice, ToolSpec

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


def _tool(tool: ToolSpec) -> dict[str, Any]:
    shown: dict[str, Any] = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    if tool.strict is not None:
        shown["strict"] = tool.strict
    return shown


def _tool_call(last: str, request: ProviderRequest, choice: ToolChoice | None) -> tuple[str, str] | None:
    """The tool to call and its arguments: the ``/tool`` command's, else the one ``tool_choice`` forces."""
    names = {t.name: t for t in request.tools}
    command = _TOOL_COMMAND.fullmatch(last.strip())
    forced = choice.name if choice is not None and choice.type == "tool" else None
    if command and command.group(1) in names and forced in (None, command.group(1)):
        return command.group(1), command.group(2).strip() or "{}"
    if choice is None or choice.type not in ("required", "tool"):
        return None
    tool = names.get(forced) if forced else request.tools[0]
    if tool is None:
        return None
    return tool.name, msgspec.json.encode(example_of(tool.parameters)).decode()


def _shaped(options: Options, text: str) -> str:
    """The answer in the form the client asked for."""
    form = options.response_format
    if form is not None and form.type == "json_object":
        return msgspec.json.encode({"echo": PREFIX + text}).decode()
    if form is not None and form.type == "json_schema":
        return msgspec.json.encode(example_of(form.schema, PREFIX + text)).decode()
    answer = PREFIX + text
    stops = (options.stop,) if isinstance(options.stop, str) else options.stop or ()
    for stop in stops:
        if stop and stop in answer:
            answer = answer[: answer.index(stop)]
    return answer


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

    It takes every client parameter. Those that shape an answer are honoured: ``tool_choice`` (``none``
    never calls a tool; ``required`` or a named tool calls it even without ``/tool``, with the smallest
    arguments its schema accepts), ``response_format`` (``json_object``: ``{"echo": TEXT}``; ``json_schema``:
    the smallest document the schema accepts, its free strings carrying the text) and ``stop`` (the answer
    ends before the first stop sequence). Sampling ones (``seed``, penalties, ``logit_bias``) change nothing
    in an answer that is always the same, and ``user`` and OpenAI's own parameters are only shown in
    ``build_body``.
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
            "tools": [_tool(t) for t in request.tools],
        }
        for key in ("temperature", "top_p", "max_tokens"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.options is not NO_OPTIONS:
            body["options"] = msgspec.to_builtins(request.options)
        return body

    def refuses(self, options: Options) -> tuple[str, str] | None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        input_tokens = _words(request.system) + sum(_words(m.content) for m in request.messages)
        last = _last_user_message(request.messages)
        latest = request.messages[-1] if request.messages else None
        options = request.options
        choice = options.tool_choice
        asked = latest is not None and latest.role == "user" and bool(request.tools)
        if choice is not None and choice.type == "none":
            asked = False
        call = _tool_call(last, request, choice) if asked else None
        if call is not None:
            await self._pause()
            name, arguments = call
            call_id = f"call_echo_{secrets.token_hex(12)}"
            yield ToolCallDelta(index=0, id=call_id, name=name, arguments=arguments)
            yield Usage(input_tokens=input_tokens, output_tokens=_words(arguments))
            yield Finish(finish_reason="tool_calls")
            return
        results = _tool_results(request.messages)
        answer = _shaped(options, results or last)
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
