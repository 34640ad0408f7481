"""Anthropic Messages adapter."""

from __future__ import annotations

from typing import Any

import anthropic
import msgspec
from anthropic._constants import ANTHROPIC_API_VERSION  # the API version the installed SDK speaks

from core.errors import BadRequest, ProviderUnavailable
from core.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers import _upstream
from providers._adapter import HttpAdapter, sdk_headers
from providers._fragments import encode_array, plain, plain_fragment
from providers.base import NO_OPTIONS, ChatMessage, Image, Options, ProviderRequest, ToolSpec

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MAX_TOKENS", "DEFAULT_MODEL", "OPENING_TURN", "AnthropicProvider"]

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


_encode = msgspec.json.Encoder().encode
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


_EPHEMERAL = {"type": "ephemeral"}


def _system(system: str, cached_chars: int) -> str | list[dict[str, Any]]:
    """The ``system`` parameter: plain text, or text blocks with a cache marker after the stable prefix."""
    if cached_chars <= 0:
        return system
    blocks: list[dict[str, Any]] = [{"type": "text", "text": system[:cached_chars], "cache_control": _EPHEMERAL}]
    rest = system[cached_chars:].strip()
    if rest:
        blocks.append({"type": "text", "text": rest})
    return blocks


# Anthropic wants the first message to be the user's; a conversation the persona opened with a greeting starts
# with the persona's. This stands for the user's side before it, as SillyTavern marks a chat's start.
OPENING_TURN = "[Start a new chat]"


def _messages(messages: tuple[ChatMessage, ...], *, encoded: bool = False) -> list[Any]:
    """The ``messages`` parameter; ``encoded``: each plain text turn as its JSON already written
    (``providers._fragments``), for the body sent."""
    out: list[Any] = []
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
        elif message.images:
            out.append({"role": message.role, "content": [_block(piece) for piece in message.pieces()]})
        elif encoded and plain(message):
            out.append(plain_fragment(message))
        else:
            out.append({"role": message.role, "content": message.content or ""})
    if messages and messages[0].role == "assistant":  # the first of ``out`` is the first message's own
        out.insert(0, {"role": "user", "content": OPENING_TURN})
    return out


def _block(piece: str | Image) -> dict[str, Any]:
    """A content block: text, or an ``image`` whose source is a data URL's base64 bytes or a web address
    (OpenAI's ``detail`` has no equivalent here, and is not sent)."""
    if isinstance(piece, str):
        return {"type": "text", "text": piece}
    if piece.inline:
        media_type, data = piece.media()
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": piece.url}}


class _Reader:
    """Anthropic's Messages stream events, until ``message_stop``."""

    def __init__(self, name: str, secret: str | None) -> None:
        self.name = name
        self.secret = secret
        self.input_tokens = self.output_tokens = self.cached_tokens = 0
        self.finish: str | None = None
        self.tool_index: dict[int, int] = {}  # content block index -> ordinal of the tool call

    def feed(self, name: bytes, data: bytes, out: list[ProviderEvent]) -> bool:
        try:
            event = _decode_event(data)
        except msgspec.DecodeError as exc:
            raise _upstream.broken_stream_error(self.name, "it sent a malformed event") from exc
        kind = event.type
        if kind == "content_block_delta" and event.delta is not None:
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                out.append(TextDelta(content=delta.text))
            elif delta.type == "input_json_delta" and delta.partial_json and event.index in self.tool_index:
                out.append(ToolCallDelta(index=self.tool_index[event.index], arguments=delta.partial_json))
        elif kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.type == "tool_use":
                self.tool_index[event.index] = len(self.tool_index)
                out.append(ToolCallDelta(index=self.tool_index[event.index], id=block.id, name=block.name))
            elif block.type == "text" and block.text:
                out.append(TextDelta(content=block.text))
        elif kind == "message_start" and event.message is not None and event.message.usage is not None:
            self.input_tokens = _input_tokens(event.message.usage)
            self.cached_tokens = event.message.usage.cache_read_input_tokens or 0
            self.output_tokens = event.message.usage.output_tokens or 0
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason:
                self.finish = _FINISH_REASONS.get(event.delta.stop_reason, "stop")
            if event.usage is not None:
                # message_delta counts are cumulative; input appears here only on some servers
                if event.usage.output_tokens is not None:
                    self.output_tokens = event.usage.output_tokens
                if event.usage.input_tokens is not None:
                    self.input_tokens = _input_tokens(event.usage)
                if event.usage.cache_read_input_tokens is not None:
                    self.cached_tokens = event.usage.cache_read_input_tokens
        elif kind == "message_stop":
            return True
        elif kind == "error":
            error = event.error or _Error()
            detail = _upstream.redact(error.message or error.type, self.secret)
            raise ProviderUnavailable(
                f"Provider '{self.name}' reported an error mid-stream ({error.type or 'error'}): {detail}.",
                provider=self.name,
                details={"type": error.type},
            )
        return False

    def end(self, out: list[ProviderEvent]) -> None:
        if self.finish is None:
            raise _upstream.broken_stream_error(self.name, "it ended without a stop reason")
        out.append(
            Usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cached_input_tokens=self.cached_tokens,
            )
        )
        out.append(Finish(finish_reason=self.finish))


# OpenAI's parameters Anthropic's Messages API has nothing for, and what to do instead.
_NO_EQUIVALENT = {
    "seed": "Anthropic's Messages API takes no seed",
    "presence_penalty": "Anthropic's Messages API has no presence penalty",
    "frequency_penalty": "Anthropic's Messages API has no frequency penalty",
    "logit_bias": "Anthropic's Messages API has no logit bias",
}


def _tool(tool: ToolSpec) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
    if tool.description:
        spec["description"] = tool.description
    if tool.strict is not None:
        spec["strict"] = tool.strict
    return spec


def _add_options(body: dict[str, Any], options: Options) -> None:
    """The client's parameters as Anthropic's equivalents (``refuses`` has turned away those without one)."""
    if options.stop is not None:
        body["stop_sequences"] = [options.stop] if isinstance(options.stop, str) else list(options.stop)
    if options.user is not None:
        body["metadata"] = {"user_id": options.user}
    choice = options.tool_choice
    serial = options.parallel_tool_calls is False
    if choice is not None or serial:
        kind = "auto" if choice is None else {"required": "any"}.get(choice.type, choice.type)
        picked: dict[str, Any] = {"type": kind}
        if choice is not None and choice.type == "tool":
            picked["name"] = choice.name
        if serial and kind != "none":
            picked["disable_parallel_tool_use"] = True
        body["tool_choice"] = picked
    form = options.response_format
    if form is not None and form.type == "json_schema":
        body["output_config"] = {"format": {"type": "json_schema", "schema": form.schema}}


class AnthropicProvider(HttpAdapter):
    """Streams messages from Anthropic's Messages API.

    The request carries the headers the official SDK sends (its auth, API version, user agent and platform
    headers); the SSE events are decoded with msgspec into our events. The client's parameters go as their
    Anthropic equivalents: ``stop`` as ``stop_sequences``, ``user`` as ``metadata.user_id``, ``tool_choice``
    and ``parallel_tool_calls`` as ``tool_choice`` (``required`` is ``any``, ``disable_parallel_tool_use``),
    a ``json_schema`` response format as structured output (``output_config.format``); the rest is refused.
    """

    kind = "anthropic"
    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    DEFAULT_MODEL = DEFAULT_MODEL
    PATH = "v1/messages"

    def _headers(self, api_key: str) -> dict[str, str]:
        # The SDK's API version and its auth header for an API key (a bearer token, as this SDK sends it).
        return {
            **sdk_headers(anthropic, "AsyncAnthropic"),
            "Authorization": f"Bearer {api_key}",
            "anthropic-version": ANTHROPIC_API_VERSION,
        }

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        return self._body(request, _messages(request.messages))

    def encode_body(self, request: ProviderRequest) -> bytes:
        """:meth:`build_body`'s JSON, each plain message's written once and joined (``providers._fragments``)."""
        items = _messages(request.messages, encoded=True)
        parts = [item if isinstance(item, bytes) else _encode(item) for item in items]
        return _encode(self._body(request, encode_array(parts)))

    def _body(self, request: ProviderRequest, messages: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": messages,
            "stream": True,
        }
        if request.system is not None:
            body["system"] = _system(request.system, request.cached_system_chars)
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            if 0 < request.cached_tools <= len(request.tools):
                body["tools"][request.cached_tools - 1]["cache_control"] = _EPHEMERAL
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.options is not NO_OPTIONS:
            _add_options(body, request.options)
        return body

    def refuses(self, options: Options) -> tuple[str, str] | None:
        for name, why in _NO_EQUIVALENT.items():
            if getattr(options, name) is not None:
                return name, why
        form = options.response_format
        if form is not None and form.type == "json_object":
            return "response_format", (
                "Anthropic has no JSON mode without a schema: ask for a `json_schema` format with the schema instead"
            )
        if form is not None and form.type == "json_schema" and not form.schema:
            return "response_format", "a `json_schema` response format needs its `json_schema.schema`"
        for name in options.openai:
            return name, "it is OpenAI's own parameter, which Anthropic's Messages API has no equivalent for"
        return None

    def _reader(self) -> _Reader:
        return _Reader(self.name, self._api_key)
