"""OpenAI Chat Completions adapter; serves any OpenAI-compatible server through ``base_url``."""

from __future__ import annotations

from typing import Any

import msgspec
import openai

from core.errors import ProviderUnavailable
from core.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers import _upstream
from providers._adapter import HttpAdapter, sdk_headers
from providers._fragments import encode_array, fragments
from providers.base import NO_OPTIONS, ChatMessage, Image, Options, ProviderRequest, ToolChoice, ToolSpec

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


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(_Chunk)
_decode_chunk = _decoder.decode
_decode_chunks = _decoder.decode_lines


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
    if message.images:
        return {"role": message.role, "content": [_part(piece) for piece in message.pieces()]}
    return {"role": message.role, "content": message.content or ""}


def _encode_message(message: ChatMessage) -> bytes:
    return _encode(_message(message))


def _part(piece: str | Image) -> dict[str, Any]:
    """A content part: text, or an ``image_url`` (a web address or a data URL, as Chat Completions takes both)."""
    if isinstance(piece, str):
        return {"type": "text", "text": piece}
    image_url: dict[str, Any] = {"url": piece.url}
    if piece.detail is not None:
        image_url["detail"] = piece.detail
    return {"type": "image_url", "image_url": image_url}


class _Reader:
    """OpenAI's ``chat.completion.chunk`` events, until ``data: [DONE]``."""

    def __init__(self, name: str, secret: str | None) -> None:
        self.name = name
        self.secret = secret
        self.finish: str | None = None
        self.usage: _Usage | None = None

    def feed(self, event: bytes, data: bytes, out: list[ProviderEvent]) -> bool:
        if data == b"[DONE]":
            return True
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            raise _upstream.broken_stream_error(self.name, "it sent a malformed chunk") from exc
        self._take(chunk, out)
        return False

    def feed_plain(self, payloads: list[bytes], out: list[ProviderEvent]) -> bool:
        """A read's chunks decoded in one call, one JSON document per line (each on its own, as ``feed`` would)."""
        finished = b"[DONE]" in payloads
        if finished:
            payloads = payloads[: payloads.index(b"[DONE]")]
        if not payloads:
            return finished
        try:
            chunks = _decode_chunks(b"\n".join(payloads))
        except msgspec.DecodeError:
            chunks = []
        if len(chunks) != len(payloads):  # a malformed or empty one: one by one, to fail where `feed` does
            for data in payloads:
                self.feed(b"", data, out)
            return finished
        for chunk in chunks:
            self._take(chunk, out)
        return finished

    def _take(self, chunk: _Chunk, out: list[ProviderEvent]) -> None:
        if chunk.error is not None:
            detail = _upstream.redact(_upstream.upstream_message({"error": chunk.error}), self.secret)
            raise ProviderUnavailable(
                f"Provider '{self.name}' reported an error mid-stream: {detail or 'no detail'}.", provider=self.name
            )
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices or ():
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    out.append(TextDelta(content=delta.content))
                for piece in delta.tool_calls or ():
                    function = piece.function or _Function()
                    out.append(
                        ToolCallDelta(
                            index=piece.index, id=piece.id, name=function.name, arguments=function.arguments or ""
                        )
                    )
            if choice.finish_reason:
                self.finish = _FINISH_REASONS.get(choice.finish_reason, "stop")

    def end(self, out: list[ProviderEvent]) -> None:
        if self.finish is None:
            raise _upstream.broken_stream_error(self.name, "it ended without a finish reason")
        if self.usage is not None:
            details = self.usage.prompt_tokens_details
            out.append(
                Usage(
                    input_tokens=self.usage.prompt_tokens,
                    output_tokens=self.usage.completion_tokens,
                    cached_input_tokens=(details.cached_tokens or 0) if details else 0,
                )
            )
        out.append(Finish(finish_reason=self.finish))


def _tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.type


def _add_options(body: dict[str, Any], options: Options) -> None:
    """The client's parameters as OpenAI names them, as they were sent."""
    for name in ("stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user", "parallel_tool_calls"):
        value = getattr(options, name)
        if value is not None:
            body[name] = list(value) if isinstance(value, tuple) else value
    if options.tool_choice is not None:
        body["tool_choice"] = _tool_choice(options.tool_choice)
    form = options.response_format
    if form is not None:
        body["response_format"] = {"type": form.type}
        if form.json_schema is not None:
            body["response_format"]["json_schema"] = form.json_schema
    if options.max_completion_tokens and "max_tokens" in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
    body.update(options.openai)


class OpenAIProvider(HttpAdapter):
    """Streams chat completions from OpenAI or any server that speaks its API.

    The request carries the headers the official SDK sends (its auth, user agent and platform headers); the
    SSE chunks are decoded with msgspec into our events. The client's parameters (:class:`Options`) go on
    as sent: this is the API they are named after.
    """

    kind = "openai"
    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    DEFAULT_MODEL = DEFAULT_MODEL
    PATH = "chat/completions"

    def _headers(self, api_key: str) -> dict[str, str]:
        return {**sdk_headers(openai, "AsyncOpenAI"), "Authorization": f"Bearer {api_key}"}

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.extend(_message(m) for m in request.messages)
        return self._body(request, messages)

    def encode_body(self, request: ProviderRequest) -> bytes:
        """:meth:`build_body`'s JSON, each plain message's written once and joined (``providers._fragments``)."""
        parts: list[bytes] = []
        if request.system is not None:
            parts.append(_encode({"role": "system", "content": request.system}))
        fragments(request.messages, _encode_message, parts)
        return _encode(self._body(request, encode_array(parts)))

    def _body(self, request: ProviderRequest, messages: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            # ``max_tokens`` rather than ``max_completion_tokens``: compatible servers all accept it.
            body["max_tokens"] = request.max_tokens
        if request.options is not NO_OPTIONS:
            _add_options(body, request.options)
        return body

    def refuses(self, options: Options) -> tuple[str, str] | None:
        """None: an OpenAI-compatible server takes every parameter of OpenAI's body."""
        return None

    def _reader(self) -> _Reader:
        return _Reader(self.name, self._api_key)
