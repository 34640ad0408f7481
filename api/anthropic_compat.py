"""Anthropic-compatible POST /v1/messages: any Anthropic SDK pointed here talks to a persona, on any provider."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, assert_never

import msgspec
from litestar import Controller, Response, post
from litestar.params import JSONBody
from msgspec import Meta, Struct

from api.body import GuardedRequest
from api.deps import CallerDep, ResourcesDep
from api.errors import anthropic_error
from api.openapi import Streams
from api.sse import sse_response
from api.trace import MemoryHeader, persona_headers, with_memory
from core.errors import BadRequest, ProviderError
from core.events import Done, ErrorEvent, Start, TextDelta, ToolCallDelta, TurnEvent, Usage
from providers import NO_OPTIONS, ChatMessage, Image, Options, ResponseFormat, ToolCall, ToolChoice, ToolSpec
from runtime.chat.collector import TurnResult
from runtime.chat.frames import Last, encoded_stream
from runtime.chat.images import image_of, media_url
from runtime.chat.pipeline import TurnInput
from runtime.chat.resolve import persona_name_of_model
from runtime.chat.turn import Turn

__all__ = ["AnthropicController", "CountTokensRequest", "MessagesRequest", "TokenCount"]


# Content blocks: a closed union on `type`. Fields the runtime has no use for (`cache_control`,
# `citations`, ...) are ignored inside blocks, as the block vocabulary grows with every API release;
# only the top level of the body is strict, as Anthropic's is.
class _Text(Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    text: str


class _ToolUse(Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class _ToolResult(Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[_Text] = ""
    is_error: bool = False


class _Base64Source(Struct, frozen=True, kw_only=True, tag_field="type", tag="base64"):
    media_type: str
    data: str


class _URLSource(Struct, frozen=True, kw_only=True, tag_field="type", tag="url"):
    url: str


class _Image(Struct, frozen=True, kw_only=True, tag_field="type", tag="image"):
    source: _Base64Source | _URLSource


_Block = _Text | _Image | _ToolUse | _ToolResult


class _Message(Struct, frozen=True, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    input_schema: dict[str, Any]
    # null: no description (what clients send for a function without a docstring).
    description: str | None = None
    strict: bool | None = None
    # Only client tools: server tools (web search, code execution, ...) would need Anthropic to run them.
    type: Literal["custom"] | None = None


class _ToolChoice(Struct, frozen=True, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class _Metadata(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user_id: str | None = None


class _Format(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class _OutputConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: _Format | None = None


class MessagesRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Anthropic's Messages body. Any other top-level field is a 400 that names it, as Anthropic answers."""

    model: str
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[_Message], Meta(min_length=1)]
    system: str | list[_Text] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop_sequences: list[str] | None = None
    # `user_id` is for the provider's abuse tracking: passed on (OpenAI's `user`).
    metadata: _Metadata | None = None
    # Structured output: a JSON schema the answer's text matches (OpenAI's `json_schema` response format).
    output_config: _OutputConfig | None = None


class CountTokensRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Anthropic's token-counting body: a Messages body's conversation, without ``max_tokens`` or sampling."""

    model: str
    messages: Annotated[list[_Message], Meta(min_length=1)]
    system: str | list[_Text] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None


class TokenCount(Struct, frozen=True, kw_only=True):
    """The input tokens a Messages body would send, the persona's context included."""

    input_tokens: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

# Our normalised finish reasons as Anthropic's stop reasons.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

# In-band errors (a stream that already started) by our error code; anything else is an `api_error`.
_STREAM_ERROR_TYPES = {"provider_timeout": "timeout_error", "provider_rate_limited": "rate_limit_error"}


def _stop_reason(finish: str) -> str:
    return _STOP_REASONS.get(finish, "end_turn")


def _joined(blocks: list[_Text]) -> str:
    # Blocks are separate passages (a document, then a question): kept apart, not run together.
    return "\n\n".join(block.text for block in blocks)


def _image(block: _Image, field: str, at: int) -> Image:
    source = block.source
    url = media_url(source.media_type, source.data) if isinstance(source, _Base64Source) else source.url
    return image_of(url, field, at=at)


def _turns(messages: list[_Message]) -> tuple[list[ChatMessage], list[str | None], list[str]]:
    """The conversation in provider-neutral form: a user turn's tool results become ``tool`` turns before its text.
    With each turn, the field its text came in: the pipeline checks what users and tools said (None: not
    checked, the client's own assistant turns and empty tool results). Then the field of each image."""
    turns: list[ChatMessage] = []
    fields: list[str | None] = []
    image_fields: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}].content"
        user = message.role == "user"
        if isinstance(message.content, str):
            turns.append(ChatMessage(role=message.role, content=message.content))
            fields.append(where if user else None)
            continue
        texts: list[_Text] = []
        calls: list[ToolCall] = []
        images: list[Image] = []
        for j, block in enumerate(message.content):
            match block:
                case _Text():
                    texts.append(block)
                case _Image():
                    if not user:
                        field = f"{where}[{j}]"
                        raise BadRequest(f"`{field}`: `image` blocks belong in user turns.", field=field)
                    # Where the image stands in the text blocks joined so far (each passage after the first
                    # opens with the separator, so the image comes before it).
                    at = len(_joined(texts)) if texts else 0
                    images.append(_image(block, f"{where}[{j}]", at))
                    image_fields.append(f"{where}[{j}]")
                case _ToolUse():
                    if user:
                        raise BadRequest(f"`{where}[{j}]`: `tool_use` blocks belong in assistant turns.", field=where)
                    calls.append(ToolCall(id=block.id, name=block.name, arguments=_encode(block.input).decode()))
                case _ToolResult():
                    if not user:
                        raise BadRequest(f"`{where}[{j}]`: `tool_result` blocks belong in user turns.", field=where)
                    result = block.content if isinstance(block.content, str) else _joined(block.content)
                    turns.append(ChatMessage(role="tool", content=result, tool_call_id=block.tool_use_id))
                    fields.append(f"{where}[{j}].content" if result else None)
                case _:
                    assert_never(block)
        text = _joined(texts) if texts else None
        if not user:
            if text is not None or calls:
                turns.append(ChatMessage(role="assistant", content=text, tool_calls=tuple(calls)))
                fields.append(None)
        elif text is not None or images:
            turns.append(ChatMessage(role="user", content=text or "", images=tuple(images)))
            fields.append(where)
        elif not message.content:
            raise BadRequest(f"`{where}` is empty: send at least one content block.", field=where)
    if not any(turn.role != "assistant" for turn in turns):
        raise BadRequest("`messages` has no user message.", field="messages")
    return turns, fields, image_fields


# Where each option came in, for a 400 that names what the client sent.
_OPTION_FIELDS = {
    "stop": "stop_sequences",
    "user": "metadata.user_id",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    "response_format": "output_config.format",
}


def _options(data: MessagesRequest) -> Options:
    """The body's parameters beyond sampling, as the provider-neutral options (shared empty when none is set)."""
    choice = data.tool_choice
    user = data.metadata.user_id if data.metadata is not None else None
    form = data.output_config.format if data.output_config is not None else None
    if choice is None and user is None and form is None and not data.stop_sequences:
        return NO_OPTIONS
    if choice is not None and choice.type == "tool" and not choice.name:
        raise BadRequest('`tool_choice.name` is required with {"type": "tool"}.', field="tool_choice.name")
    return Options(
        stop=tuple(data.stop_sequences) if data.stop_sequences else None,
        user=user,
        tool_choice=None
        if choice is None
        else ToolChoice(type="required" if choice.type == "any" else choice.type, name=choice.name),
        parallel_tool_calls=False if choice is not None and choice.disable_parallel_tool_use else None,
        response_format=None
        if form is None
        else ResponseFormat(type="json_schema", json_schema={"name": "output", "schema": form.schema}),
    )


def _turn_input(
    data: MessagesRequest | CountTokensRequest,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
) -> TurnInput:
    """Anthropic's body as a turn: nothing stored, since an Anthropic client sends the whole conversation each time.
    A token-counting body is the same turn without an answer's ``max_tokens`` and sampling."""
    persona_name = persona_name_of_model(data.model)
    if data.system is None:
        system: tuple[str, ...] = ()
        system_fields: tuple[str, ...] = ()
    elif isinstance(data.system, str):
        system, system_fields = ((data.system,), ("system",)) if data.system else ((), ())
    else:
        given = [(block.text, f"system[{k}].text") for k, block in enumerate(data.system) if block.text]
        system, system_fields = tuple(t for t, _ in given), tuple(f for _, f in given)
    tools = tuple(
        ToolSpec(name=t.name, description=t.description or "", parameters=t.input_schema, strict=t.strict)
        for t in data.tools or ()
    )
    turns, fields, image_fields = _turns(data.messages)
    return TurnInput(
        route="messages",
        messages=tuple(turns),
        message_fields=tuple(fields),
        system=system,
        system_fields=system_fields,
        tools=tools,
        tool_fields=tuple(f"tools[{i}]" for i in range(len(tools))),
        image_fields=tuple(image_fields),
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        persona_name=persona_name,
        # Counting tokens calls no provider: only an answer's options matter.
        options=_options(data) if isinstance(data, MessagesRequest) else NO_OPTIONS,
        option_fields=_OPTION_FIELDS,
    )


def _message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def _tool_input(call: ToolCall, provider: str) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Anthropic's ``tool_use.input`` is."""
    if not call.arguments.strip():
        return {}
    try:
        value = _decode(call.arguments)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise ProviderError(
            f"The model called the tool {call.name!r} with arguments that are not a JSON object; try again.",
            provider=provider,
        )
    return value


def _message(result: TurnResult, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": result.text}] if result.text else []
    content += [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call, result.start.provider)}
        for call in result.tool_calls
    ]
    usage = result.usage
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(result.finish_reason),
        "stop_sequence": None,
        "usage": _usage(usage),
    }


def _usage(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` leaves out what was read from the prompt cache."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + _encode(data) + b"\n\n"


PING = _event(b"ping", {"type": "ping"})
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":'
)
_JSON_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":'
)


class _Events:
    """The Messages stream codec: our events in, Anthropic's SSE events out, one write per batch.

    Content blocks are numbered in the order they open: the answer's text, then one block per tool call.
    Only one block is open at a time, closed when the next one opens or the answer ends; a later piece of
    an already closed tool call (providers send each call's pieces together) still goes to its own index.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.blocks = 0  # blocks opened so far
        self.open: int | None = None  # index of the open block
        self.text: int | None = None  # index of the open text block
        self.tools: dict[int, int] = {}  # tool call index -> block index
        self.usage: Usage | None = None

    def _close(self, parts: list[bytes]) -> None:
        if self.open is not None:
            parts.append(_STOP % self.open)
            self.open = self.text = None

    def _start(self, parts: list[bytes], block: dict[str, Any]) -> int:
        self._close(parts)
        index = self.open = self.blocks
        self.blocks += 1
        start = {"type": "content_block_start", "index": index, "content_block": block}
        parts.append(_event(b"content_block_start", start))
        return index

    def _tool_piece(self, parts: list[bytes], event: ToolCallDelta) -> None:
        index = self.tools.get(event.index)
        if index is None:
            block = {"type": "tool_use", "id": event.id or f"call_{event.index}", "name": event.name or "", "input": {}}
            index = self.tools[event.index] = self._start(parts, block)
        if event.arguments:
            parts.append(_JSON_DELTA % index + _encode(event.arguments) + b"}}\n\n")

    def _message_start(self) -> bytes:
        message: dict[str, Any] = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Known only at the end, where `message_delta` reports both counts.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _end(self, parts: list[bytes], done: Done) -> bytes:
        self._close(parts)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(done.finish_reason), "stop_sequence": None},
            "usage": _usage(self.usage),
        }
        parts.append(_event(b"message_delta", delta))
        parts.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        return Last(b"".join(parts))

    def encode(self, batch: list[TurnEvent]) -> bytes:
        parts: list[bytes] = []
        for event in batch:
            match event:
                case TextDelta(content=content):
                    if self.text is None:
                        self.text = self._start(parts, {"type": "text", "text": ""})
                    parts.append(_TEXT_DELTA % self.text + _encode(content) + b"}}\n\n")
                case ToolCallDelta():
                    self._tool_piece(parts, event)
                case Start():
                    parts.append(self._message_start())
                case Usage():
                    self.usage = event
                case Done():
                    return self._end(parts, event)
                case ErrorEvent(code=code, message=message):
                    error_type = _STREAM_ERROR_TYPES.get(code, "api_error")
                    parts.append(_event(b"error", anthropic_error(error_type, message)))
                    return Last(b"".join(parts))
                case _:
                    assert_never(event)
        return b"".join(parts)

    def stream(self, turn: Turn, heartbeat: float) -> AsyncIterator[bytes]:
        return encoded_stream(turn.batches(), heartbeat, self.encode, PING)


class AnthropicController(Controller):
    path = "/v1"
    tags = ["anthropic-compatible"]

    @post("/messages", status_code=200, operation_class=Streams)
    async def messages(
        self, data: JSONBody[MessagesRequest], request: GuardedRequest, memory: MemoryHeader = None
    ) -> Response[Any]:
        resources = request.resources
        asked = _turn_input(data, temperature=data.temperature, top_p=data.top_p, max_tokens=data.max_tokens)
        turn = await resources.chat.run(request.caller, with_memory(asked, memory))
        headers = persona_headers(turn.start)
        if data.stream:
            return sse_response(_Events(data.model).stream(turn, resources.settings.heartbeat_seconds), headers)
        return Response(_message(await turn.collect(), data.model), headers=headers)

    @post("/messages/count_tokens", status_code=200)
    async def count_tokens(
        self,
        data: JSONBody[CountTokensRequest],
        caller: CallerDep,
        resources: ResourcesDep,
        memory: MemoryHeader = None,
    ) -> Response[TokenCount]:
        """The input tokens ``/v1/messages`` would send for this body: the persona's rendered prompt, its lore and
        the caller's memories as a real turn would add them, counted as the context builder counts them (what
        render's ``context.used`` says). No provider is called and nothing is stored."""
        plan = await resources.chat.plan(caller, with_memory(_turn_input(data), memory), exact=True)
        persona = plan.persona
        headers = {
            "x-persona-id": str(persona.id),
            "x-persona-version": str(persona.version),
            "x-persona-source": plan.source,
        }
        return Response(TokenCount(input_tokens=plan.context.account.used), headers=headers)
