"""OpenAI Chat Completions adapter; serves any OpenAI-compatible server through ``base_url``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec
import openai

from core.errors import ProviderError, ProviderUnavailable
from providers import _upstream
from providers.base import ChatMessage, ProviderConfig, ProviderRequest
from providers.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "OpenAIProvider"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


# The few fields of a ``chat.completion.chunk`` we read; msgspec skips the rest without building them.
class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallPiece(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallPiece] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content or ""}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content or ""}


class OpenAIProvider:
    """Streams chat completions from OpenAI or any server that speaks its API.

    The official SDK sends the request (auth, base URL, timeouts, typed HTTP errors) with its
    retries off; the SSE body is read raw and each chunk decoded with msgspec.
    """

    kind = "openai"

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.default_model = config.default_model or DEFAULT_MODEL
        self._api_key = config.api_key
        self._client = openai.AsyncOpenAI(
            # An explicit key and URL keep the SDK from reading OPENAI_* variables behind our back.
            api_key=config.api_key or "unused",
            base_url=config.base_url or DEFAULT_BASE_URL,
            timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
            max_retries=0,  # retries and fallbacks belong to the runtime; SDK retries would stack
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.extend(_message(m) for m in request.messages)
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            # ``max_tokens`` rather than ``max_completion_tokens``: compatible servers all accept it.
            body["max_tokens"] = request.max_tokens
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        body = self.build_body(request)
        try:
            response = await self._client.post("/chat/completions", cast_to=httpx2.Response, body=body, stream=True)
        except openai.APIError as exc:
            raise self._sdk_error(exc) from exc
        async for event in _upstream.read_stream(self.name, response, self._events):
            yield event

    async def _events(self, lines: AsyncIterator[str]) -> AsyncIterator[ProviderEvent]:
        finish: str | None = None
        usage: _Usage | None = None
        async for _event, data in _upstream.iter_sse(lines):
            if data == "[DONE]":
                break
            try:
                chunk = _decode_chunk(data)
            except msgspec.DecodeError as exc:
                raise _upstream.broken_stream_error(self.name, "it sent a malformed chunk") from exc
            if chunk.error is not None:
                detail = _upstream.redact(_upstream.upstream_message({"error": chunk.error}), self._api_key)
                raise ProviderUnavailable(
                    f"Provider '{self.name}' reported an error mid-stream: {detail or 'no detail'}.",
                    provider=self.name,
                )
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices or ():
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        yield TextDelta(content=delta.content)
                    for piece in delta.tool_calls or ():
                        function = piece.function or _Function()
                        yield ToolCallDelta(
                            index=piece.index,
                            id=piece.id,
                            name=function.name,
                            arguments=function.arguments or "",
                        )
                if choice.finish_reason:
                    finish = _FINISH_REASONS.get(choice.finish_reason, "stop")
        if finish is None:
            raise _upstream.broken_stream_error(self.name, "it ended without a finish reason")
        if usage is not None:
            yield Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
        yield Finish(finish_reason=finish)

    def _sdk_error(self, exc: openai.APIError) -> ProviderError:
        if isinstance(exc, openai.APITimeoutError):
            return _upstream.timeout_error(self.name)
        if isinstance(exc, openai.APIConnectionError):
            return _upstream.connection_error(self.name)
        if isinstance(exc, openai.APIStatusError):
            return _upstream.error_for_status(self.name, exc.status_code, exc.response.headers, exc.body, self._api_key)
        return ProviderUnavailable(f"Provider '{self.name}' sent an unusable response.", provider=self.name)

    async def aclose(self) -> None:
        await self._client.close()
