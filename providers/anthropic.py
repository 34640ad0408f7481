"""Anthropic Messages adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import msgspec

from core.errors import BadRequest, ProviderError, ProviderUnavailable
from providers import _upstream
from providers.base import ChatMessage, ProviderConfig, ProviderRequest
from providers.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MAX_TOKENS", "DEFAULT_MODEL", "AnthropicProvider"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_TOKENS = 1024  # the Messages API requires max_tokens; this is the answer length if unset

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# One flat struct covers every stream event type; msgspec skips the fields we never read.
class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Block(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None
    text: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_json = msgspec.json.Decoder().decode


def _input_tokens(usage: _Usage) -> int:
    # Anthropic counts cached prompt tokens apart from input_tokens; all of them were read as input.
    return (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


def _tool_input(arguments: str, call_id: str) -> Any:
    if not arguments.strip():
        return {}
    try:
        return _decode_json(arguments)
    except msgspec.DecodeError:
        raise BadRequest(
            f"Tool call '{call_id}' has arguments that are not valid JSON; Anthropic needs a JSON object.",
            field="messages",
        ) from None


def _messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the tool_result blocks of the current user message
    for message in messages:
        if message.role == "tool":
            # Anthropic wants every result of one assistant turn in a single user message.
            if results is None:
                results = []
                out.append({"role": "user", "content": results})
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id or "",
                    "content": message.content or "",
                }
            )
            continue
        results = None
        if message.role == "assistant" and message.tool_calls:
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments, c.id)}
                for c in message.tool_calls
            )
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": message.role, "content": message.content or ""})
    return out


class AnthropicProvider:
    """Streams messages from Anthropic's Messages API.

    The official SDK sends the request (auth, version header, base URL, timeouts, typed HTTP
    errors) with its retries off; the SSE body is read raw and each event decoded with msgspec.
    """

    kind = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.default_model = config.default_model or DEFAULT_MODEL
        self._api_key = config.api_key
        self._client = anthropic.AsyncAnthropic(
            # An explicit key and URL keep the SDK from reading ANTHROPIC_* variables or profiles.
            api_key=config.api_key or "unused",
            base_url=config.base_url or DEFAULT_BASE_URL,
            timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
            max_retries=0,  # retries and fallbacks belong to the runtime; SDK retries would stack
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": _messages(request.messages),
            "stream": True,
        }
        if request.system is not None:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                if t.description
                else {"name": t.name, "input_schema": t.parameters}
                for t in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        body = self.build_body(request)
        try:
            response = await self._client.post("/v1/messages", cast_to=httpx2.Response, body=body, stream=True)
        except anthropic.APIError as exc:
            raise self._sdk_error(exc) from exc
        async for event in _upstream.read_stream(self.name, response, self._events):
            yield event

    async def _events(self, lines: AsyncIterator[str]) -> AsyncIterator[ProviderEvent]:
        input_tokens = output_tokens = 0
        finish: str | None = None
        tool_index: dict[int, int] = {}  # content block index -> ordinal of the tool call
        async for _name, data in _upstream.iter_sse(lines):
            try:
                event = _decode_event(data)
            except msgspec.DecodeError as exc:
                raise _upstream.broken_stream_error(self.name, "it sent a malformed event") from exc
            kind = event.type
            if kind == "content_block_delta" and event.delta is not None:
                delta = event.delta
                if delta.type == "text_delta" and delta.text:
                    yield TextDelta(content=delta.text)
                elif delta.type == "input_json_delta" and delta.partial_json and event.index in tool_index:
                    yield ToolCallDelta(index=tool_index[event.index], arguments=delta.partial_json)
            elif kind == "content_block_start" and event.content_block is not None:
                block = event.content_block
                if block.type == "tool_use":
                    tool_index[event.index] = len(tool_index)
                    yield ToolCallDelta(index=tool_index[event.index], id=block.id, name=block.name)
                elif block.type == "text" and block.text:
                    yield TextDelta(content=block.text)
            elif kind == "message_start" and event.message is not None and event.message.usage is not None:
                input_tokens = _input_tokens(event.message.usage)
                output_tokens = event.message.usage.output_tokens or 0
            elif kind == "message_delta":
                if event.delta is not None and event.delta.stop_reason:
                    finish = _FINISH_REASONS.get(event.delta.stop_reason, "stop")
                if event.usage is not None:
                    # message_delta counts are cumulative; input appears here only on some servers
                    if event.usage.output_tokens is not None:
                        output_tokens = event.usage.output_tokens
                    if event.usage.input_tokens is not None:
                        input_tokens = _input_tokens(event.usage)
            elif kind == "message_stop":
                break
            elif kind == "error":
                error = event.error or _Error()
                detail = _upstream.redact(error.message or error.type, self._api_key)
                kind_of_error = error.type or "error"
                raise ProviderUnavailable(
                    f"Provider '{self.name}' reported an error mid-stream ({kind_of_error}): {detail}.",
                    provider=self.name,
                    details={"type": error.type},
                )
        if finish is None:
            raise _upstream.broken_stream_error(self.name, "it ended without a stop reason")
        yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finish(finish_reason=finish)

    def _sdk_error(self, exc: anthropic.APIError) -> ProviderError:
        if isinstance(exc, anthropic.APITimeoutError):
            return _upstream.timeout_error(self.name)
        if isinstance(exc, anthropic.APIConnectionError):
            return _upstream.connection_error(self.name)
        if isinstance(exc, anthropic.APIStatusError):
            return _upstream.error_for_status(self.name, exc.status_code, exc.response.headers, exc.body, self._api_key)
        return ProviderUnavailable(f"Provider '{self.name}' sent an unusable response.", provider=self.name)

    async def aclose(self) -> None:
        await self._client.close()
