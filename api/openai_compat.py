"""OpenAI-compatible routes under /v1: any OpenAI SDK pointed here talks to a persona."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, assert_never

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta, Struct

from api.body import GuardedRequest
from api.deps import CallerDep, ResourcesDep
from api.openapi import Streams
from api.sse import sse_response
from api.trace import MemoryHeader, persona_headers, with_memory
from core.errors import BadRequest
from core.events import Done, ErrorEvent, Start, TextDelta, ToolCallDelta, TurnEvent, Usage
from providers import NO_OPTIONS, ChatMessage, Image, Options, ResponseFormat, ToolCall, ToolChoice, ToolSpec
from runtime.chat.collector import TurnResult
from runtime.chat.frames import DONE, Last, encoded_stream
from runtime.chat.images import image_of
from runtime.chat.pipeline import TurnInput
from runtime.chat.resolve import find_model_id, list_model_ids, persona_name_of_model
from runtime.chat.turn import Turn

__all__ = ["OpenAIController"]


class _FunctionCall(Struct, frozen=True, kw_only=True):
    name: str
    arguments: str = "{}"


class _ToolCall(Struct, frozen=True, kw_only=True):
    id: str
    function: _FunctionCall
    type: str = "function"


class _ImageURL(Struct, frozen=True, kw_only=True):
    url: str
    detail: str | None = None


class _Part(Struct, frozen=True, kw_only=True):
    type: str
    text: str | None = None
    # An object, as OpenAI's API takes it; some clients send the bare URL.
    image_url: _ImageURL | str | None = None


class _Message(Struct, frozen=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _Function(Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    # null: no description (what clients send for a function without a docstring).
    description: str | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class _Tool(Struct, frozen=True, kw_only=True):
    function: _Function
    type: Literal["function"] = "function"


class _StreamOptions(Struct, frozen=True, kw_only=True):
    include_usage: bool = False


class _NamedFunction(Struct, frozen=True, kw_only=True):
    name: str


class _NamedChoice(Struct, frozen=True, kw_only=True):
    type: Literal["function"]
    function: _NamedFunction


class _JsonSchema(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class _ResponseFormat(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


Penalty = Annotated[float, Meta(ge=-2, le=2)]

# OpenAI's own parameters with no provider-neutral meaning: OpenAI-compatible providers get them as sent.
_OPENAI_ONLY: tuple[str, ...] = ("reasoning_effort", "service_tier", "metadata", "store", "prediction", "verbosity")
_OPENAI_ONLY += ("safety_identifier", "prompt_cache_key")


class CompletionRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's chat completion body. Each parameter is passed on to the persona's provider (as sent, or as
    its equivalent) or refused with a 400 that names it; so is a field OpenAI's API does not have."""

    model: str
    messages: Annotated[list[_Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    tools: list[_Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | _NamedChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    user: str | None = None
    n: int | None = None
    # Refused when asked for: the answers carry no log probabilities.
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    # Refused: answers are text (and tool calls); `tools` replaced `functions`.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    # OpenAI's own, as sent (see `_OPENAI_ONLY`).
    reasoning_effort: str | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    prediction: dict[str, Any] | None = None
    verbosity: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


def _text(message: _Message, index: int) -> tuple[str | None, tuple[Image, ...], list[str]]:
    """A message's text, its images (user messages only) placed in the text, and the field of each image."""
    if message.content is None or isinstance(message.content, str):
        return message.content, (), []
    parts: list[str] = []
    images: list[Image] = []
    fields: list[str] = []
    at = 0
    for j, part in enumerate(message.content):
        where = f"messages[{index}].content[{j}]"
        if part.type == "image_url" and part.image_url is not None:
            if message.role != "user":
                raise BadRequest(f"`{where}`: images belong in user messages.", field=where)
            image = _ImageURL(url=part.image_url) if isinstance(part.image_url, str) else part.image_url
            images.append(image_of(image.url, where, at=at, detail=image.detail))
            fields.append(where)
        elif part.type == "text" and part.text is not None:
            parts.append(part.text)
            at += len(part.text)
        else:
            raise BadRequest(
                f"`{where}`: only `text` and `image_url` content parts are supported, not {part.type!r}.",
                field=where,
            )
    return "".join(parts), tuple(images), fields


def _split(messages: list[_Message]) -> tuple[list[str], list[str], list[ChatMessage], list[str], list[str]]:
    """The client's system messages and the conversation in provider-neutral form, each with the field it
    came in (``messages[i].content``), and the field of each image (``messages[i].content[j]``)."""
    system: list[str] = []
    system_fields: list[str] = []
    turns: list[ChatMessage] = []
    fields: list[str] = []
    image_fields: list[str] = []
    for index, message in enumerate(messages):
        text, images, where = _text(message, index)
        image_fields += where
        if message.role in ("system", "developer"):
            if text:
                system.append(text)
                system_fields.append(f"messages[{index}].content")
            continue
        fields.append(f"messages[{index}].content")
        if message.role == "tool":
            if not message.tool_call_id:
                raise BadRequest(
                    f"messages[{index}] is a tool result without `tool_call_id`.",
                    field=f"messages[{index}].tool_call_id",
                )
            turns.append(ChatMessage(role="tool", content=text or "", tool_call_id=message.tool_call_id))
        elif message.role == "assistant":
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in message.tool_calls or ()
            )
            # Beside tool calls, an empty `content` (what the SDKs' stream helpers send back) is no content.
            turns.append(ChatMessage(role="assistant", content=(text or None) if calls else text, tool_calls=calls))
        else:
            turns.append(ChatMessage(role="user", content=text or "", images=images))
    if not turns:
        raise BadRequest("`messages` has no user message.", field="messages")
    return system, system_fields, turns, fields, image_fields


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


_encode = msgspec.json.Encoder().encode
_TEXT_END = b'},"finish_reason":null}]}\n\n'


class _Chunks:
    """The OpenAI ``chat.completion.chunk`` codec: our events in, SSE bytes out, one write per batch.

    Every chunk of a stream shares its id, time and model, so their JSON is cut once around the delta and
    each text piece costs one string encoding.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(16)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        head = _encode({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": model})
        self._head = b"data: " + head[:-1]
        self._delta = self._head + b',"choices":[{"index":0,"delta":'
        self._text = self._delta + b'{"content":'

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {"choices": []}
        if delta is not None:
            body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        if usage is not None:
            body["usage"] = _usage(usage)
        return self._head + b"," + _encode(body)[1:] + b"\n\n"

    def encode(self, batch: list[TurnEvent], usage: list[Usage]) -> bytes:
        parts: list[bytes] = []
        for event in batch:
            match event:
                case TextDelta(content=content):
                    parts += (self._text, _encode(content), _TEXT_END)  # joined once, below
                case Start():
                    parts.append(self.chunk({"role": "assistant", "content": ""}))
                case ToolCallDelta():
                    parts.append(self.chunk({"tool_calls": [_tool_call_piece(event)]}))
                case Usage():
                    usage.append(event)
                case Done(finish_reason=finish):
                    parts.append(self.chunk({}, finish=finish))
                    if self.include_usage and usage:
                        parts.append(self.chunk(None, usage=usage[-1]))
                    parts.append(DONE)
                    return Last(b"".join(parts))
                case ErrorEvent(code=code, message=message):
                    error = {"message": message, "type": "api_error", "code": code, "param": None}
                    parts.append(b"data: " + _encode({"error": error}) + b"\n\n" + DONE)
                    return Last(b"".join(parts))
                case _:
                    assert_never(event)
        return b"".join(parts)

    def stream(self, turn: Turn, heartbeat: float) -> AsyncIterator[bytes]:
        usage: list[Usage] = []
        return encoded_stream(turn.batches(), heartbeat, lambda batch: self.encode(batch, usage))


def _tool_call_piece(event: ToolCallDelta) -> dict[str, Any]:
    call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
    if event.id:
        call["id"], call["type"] = event.id, "function"
    if event.name:
        call["function"]["name"] = event.name
    return call


def _completion(result: TurnResult, model: str) -> dict[str, Any]:
    calls = result.tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": result.text or (None if calls else "")}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
    body: dict[str, Any] = {
        "id": f"chatcmpl-{secrets.token_hex(16)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
    }
    if result.usage is not None:
        body["usage"] = _usage(result.usage)
    return body


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "persona-runtime"}


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai-compatible"]

    @get("/models")
    async def models(self, caller: CallerDep, resources: ResourcesDep) -> dict[str, Any]:
        ids = await list_model_ids(resources.personas, caller)
        return {"object": "list", "data": [_model(i) for i in ids]}

    # `path`: a model id has a slash in it (`persona/Mu`), which SDKs send percent-encoded or not.
    @get("/models/{model_id:path}")
    async def model(self, model_id: FromPath[str], caller: CallerDep, resources: ResourcesDep) -> dict[str, Any]:
        return _model(await find_model_id(resources.personas, caller, model_id.lstrip("/")))

    @post("/chat/completions", status_code=200, operation_class=Streams)
    async def completions(
        self, data: JSONBody[CompletionRequest], request: GuardedRequest, memory: MemoryHeader = None
    ) -> Response[Any]:
        resources = request.resources
        turn = await resources.chat.run(request.caller, with_memory(_turn_input(data), memory))
        headers = persona_headers(turn.start)
        if data.stream:
            chunks = _Chunks(data.model, data.stream_options is not None and data.stream_options.include_usage)
            return sse_response(chunks.stream(turn, resources.settings.heartbeat_seconds), headers)
        return Response(_completion(await turn.collect(), data.model), headers=headers)


def _refuse(field: str, why: str) -> BadRequest:
    return BadRequest(f"`{field}` is not supported here: {why}.", field=field)


def _refused(data: CompletionRequest) -> None:
    """The parameters no persona's provider is asked for, since their answer has nowhere to go here."""
    if data.n not in (None, 1):
        raise _refuse("n", "each request gets one answer; send `n` = 1 or leave it out, and ask again for another")
    if data.logprobs:
        raise _refuse("logprobs", "answers carry no log probabilities; leave it out or send false")
    if data.top_logprobs:
        raise _refuse("top_logprobs", "answers carry no log probabilities; leave it out")
    if data.modalities is not None and data.modalities != ["text"]:
        raise _refuse("modalities", 'answers are text; send ["text"] or leave it out')
    if data.audio is not None:
        raise _refuse("audio", "answers are text")
    if data.web_search_options is not None:
        raise _refuse("web_search_options", "a search model's citations have nowhere to go here")
    if data.functions is not None:
        raise _refuse("functions", "send them as `tools`")
    if data.function_call is not None:
        raise _refuse("function_call", "send `tool_choice`")
    if data.max_tokens is not None and data.max_completion_tokens not in (None, data.max_tokens):
        raise _refuse("max_completion_tokens", "it differs from `max_tokens`; send one of them")
    form = data.response_format
    schema = form.json_schema if form is not None else None
    if form is not None and form.type == "json_schema" and (schema is None or schema.schema is None):
        raise BadRequest(
            "`response_format.json_schema.schema` is required with `json_schema`: send the JSON schema the answer "
            "must match.",
            field="response_format.json_schema.schema",
        )


def _options(data: CompletionRequest) -> Options:
    """The body's parameters beyond sampling, as the provider-neutral options (shared empty when none is set)."""
    choice = data.tool_choice
    form = data.response_format
    extra = {name: value for name in _OPENAI_ONLY if (value := getattr(data, name)) is not None}
    named = data.max_completion_tokens is not None and data.max_tokens is None
    if not (
        extra
        or named
        or choice is not None
        or form is not None
        or any(getattr(data, name) is not None for name in _NEUTRAL)
    ):
        return NO_OPTIONS
    return Options(
        stop=tuple(data.stop) if isinstance(data.stop, list) else data.stop,
        seed=data.seed,
        presence_penalty=data.presence_penalty,
        frequency_penalty=data.frequency_penalty,
        logit_bias=data.logit_bias,
        user=data.user,
        tool_choice=(
            None
            if choice is None
            else ToolChoice(type=choice)
            if isinstance(choice, str)
            else ToolChoice(type="tool", name=choice.function.name)
        ),
        parallel_tool_calls=data.parallel_tool_calls,
        response_format=None
        if form is None
        else ResponseFormat(
            type=form.type,
            json_schema=None if form.json_schema is None else msgspec.to_builtins(form.json_schema),
        ),
        max_completion_tokens=named,
        openai=extra,
    )


_NEUTRAL = ("stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user", "parallel_tool_calls")


def _turn_input(data: CompletionRequest) -> TurnInput:
    """OpenAI's body as a turn: nothing stored, since an OpenAI client sends the whole conversation each time."""
    _refused(data)
    persona_name = persona_name_of_model(data.model)
    system, system_fields, turns, fields, image_fields = _split(data.messages)
    tools = tuple(
        ToolSpec(
            name=t.function.name,
            description=t.function.description or "",
            parameters=t.function.parameters,
            strict=t.function.strict,
        )
        for t in data.tools or ()
    )
    return TurnInput(
        route="chat_completions",
        messages=tuple(turns),
        system=tuple(system),
        tools=tools,
        message_fields=tuple(fields),
        system_fields=tuple(system_fields),
        tool_fields=tuple(f"tools[{i}].function" for i in range(len(tools))),
        image_fields=tuple(image_fields),
        temperature=data.temperature,
        top_p=data.top_p,
        max_tokens=data.max_tokens or data.max_completion_tokens,
        persona_name=persona_name,
        options=_options(data),
    )
