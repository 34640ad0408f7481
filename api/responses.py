"""OpenAI's Responses API under /v1/responses: the official SDK's ``responses.create`` and ``.stream``, and
agent frameworks built on them, talk to a persona.

A request's input items become a turn as any other route's do; a stored response keeps the conversation
through its output, so ``previous_response_id`` continues it with one read. Its parameters beyond sampling
(``tool_choice``, ``parallel_tool_calls``, ``text.format``, ...) become the same provider-neutral options as
``/v1/chat/completions``'s, checked against the persona's provider; what the runtime does not serve (built-in
tools, background runs, ...) is a 400 naming the field, never dropped.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, assert_never

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta, Struct

from api.body import GuardedRequest
from api.deps import CallerDep, ResourcesDep
from api.openapi import Streams
from api.sse import sse_response
from api.trace import MemoryHeader, persona_headers, with_memory
from core.errors import BadRequest, NotFound, PersonaRuntimeError
from core.events import Done, ErrorEvent, Start, TextDelta, ToolCallDelta, TurnEvent, Usage
from personas.models import Caller
from providers import NO_OPTIONS, ChatMessage, Image, Options, ResponseFormat, ToolCall, ToolChoice, ToolSpec
from runtime.chat.collector import TurnResult
from runtime.chat.frames import Last, encoded_stream
from runtime.chat.images import image_of
from runtime.chat.pipeline import TurnInput
from runtime.chat.resolve import persona_name_of_model
from runtime.chat.responses import ResponseStore, StoredResponse
from runtime.chat.turn import Turn

__all__ = ["ResponsesController", "ResponsesRequest"]

log = logging.getLogger(__name__)


class _TextFormat(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """``text.format``: plain text, any JSON object, or JSON matching ``schema`` (Responses puts ``name``,
    ``schema`` and ``strict`` beside ``type``, where Chat Completions nests them in ``json_schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class _TextConfig(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    format: _TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class _FunctionChoice(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"]
    name: str


class _Reasoning(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    effort: str | None = None
    # Refused when asked for: the output carries no reasoning items.
    summary: str | None = None
    generate_summary: str | None = None


class _StreamOptions(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    include_obfuscation: bool | None = None


class ResponsesRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's Responses body, as far as the runtime serves it: any other field is a 400 that names it."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    stream_options: _StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | _FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    text: _TextConfig | None = None
    # Kept on the stored response and answered with it; not sent to the provider.
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: _Reasoning | None = None
    # OpenAI's own, as sent to an OpenAI-compatible provider (see `_OPENAI_ONLY`).
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Accepted when they ask for nothing the runtime lacks: no extra output to include, no truncation, no log
    # probabilities.
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None


# OpenAI's own parameters with no provider-neutral meaning, named as Chat Completions names them (where the
# Responses body nests them, `_OPTION_FIELDS` says so in an error).
_OPENAI_ONLY = ("service_tier", "safety_identifier", "prompt_cache_key")

# Where each option came in, for a 400 that names what the client sent.
_OPTION_FIELDS = {
    "response_format": "text.format",
    "verbosity": "text.verbosity",
    "reasoning_effort": "reasoning.effort",
}


_encode = msgspec.json.Encoder().encode

# Text parts of a message item: what a user sends, and what an earlier answer said (agent SDKs send output
# items back as input).
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _unserved(data: ResponsesRequest) -> None:
    """Refuse, naming the field, what this runtime cannot do, rather than answer as if it had been done."""
    if data.include:
        raise BadRequest(
            f"`include` {data.include[0]!r} is not served here: this runtime adds no extra output. "
            "Leave `include` out.",
            field="include",
        )
    if data.truncation == "auto":
        raise BadRequest(
            '`truncation` "auto" is not served: a conversation that does not fit is refused, not cut. Send '
            '"disabled" or leave it out.',
            field="truncation",
        )
    if data.top_logprobs:
        raise BadRequest(
            "`top_logprobs` is not served: answers carry no log probabilities. Leave it out.", field="top_logprobs"
        )
    if data.max_tool_calls is not None:
        raise BadRequest(
            "`max_tool_calls` is not served: no provider takes a limit on tool calls. Leave it out, and stop "
            "running the tools your side once you have had enough.",
            field="max_tool_calls",
        )
    reasoning = data.reasoning
    if reasoning is not None and (reasoning.summary or reasoning.generate_summary):
        field = "reasoning.summary" if reasoning.summary else "reasoning.generate_summary"
        raise BadRequest(f"`{field}` is not served: the output carries no reasoning items. Leave it out.", field=field)
    if data.stream_options is not None and data.stream_options.include_obfuscation:
        raise BadRequest(
            "`stream_options.include_obfuscation` is not served: the events carry no obfuscation padding. "
            "Send false or leave it out.",
            field="stream_options.include_obfuscation",
        )


def _response_format(form: _TextFormat | None) -> ResponseFormat | None:
    """``text.format`` as the provider-neutral response format; plain text asks for nothing and is none."""
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return ResponseFormat(type="json_object")
    if form.name is None:
        raise BadRequest(
            '`text.format.name` is required with "json_schema": name the schema.', field="text.format.name"
        )
    if form.schema is None:
        raise BadRequest(
            '`text.format.schema` is required with "json_schema": send the JSON schema the answer must match.',
            field="text.format.schema",
        )
    schema = {k: v for k, v in msgspec.to_builtins(form).items() if k != "type"}
    return ResponseFormat(type="json_schema", json_schema=schema)


def _options(data: ResponsesRequest) -> Options:
    """The body's parameters beyond sampling, as the same options ``/v1/chat/completions`` makes of its own
    (shared empty when none is set)."""
    choice = data.tool_choice
    form = _response_format(data.text.format if data.text is not None else None)
    extra = {name: value for name in _OPENAI_ONLY if (value := getattr(data, name)) is not None}
    if data.text is not None and data.text.verbosity is not None:
        extra["verbosity"] = data.text.verbosity
    if data.reasoning is not None and data.reasoning.effort is not None:
        extra["reasoning_effort"] = data.reasoning.effort
    if not extra and choice is None and form is None and data.parallel_tool_calls is None and data.user is None:
        return NO_OPTIONS
    return Options(
        user=data.user,
        tool_choice=(
            None
            if choice is None
            else ToolChoice(type=choice)
            if isinstance(choice, str)
            else ToolChoice(type="tool", name=choice.name)
        ),
        parallel_tool_calls=data.parallel_tool_calls,
        response_format=form,
        openai=extra,
    )


def _tools(tools: list[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    specs = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(
                f"`{where}.type` {kind!r} is not served: this runtime runs no built-in tools. Send function tools "
                "only, and run them yourself.",
                field=f"{where}.type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"`{where}.name` is missing: give the function a name.", field=f"{where}.name")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequest(f"`{where}.description` must be a string.", field=f"{where}.description")
        parameters = tool.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        elif not isinstance(parameters, dict):
            raise BadRequest(f"`{where}.parameters` must be a JSON schema object.", field=f"{where}.parameters")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise BadRequest(f"`{where}.strict` must be true or false.", field=f"{where}.strict")
        specs.append(ToolSpec(name=name, description=description or "", parameters=parameters, strict=strict))
    return tuple(specs)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"`{where}` must be a string or a list of content parts.", field=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            hint = ": images belong in user messages" if kind == "input_image" else ""
            raise BadRequest(
                f"`{where}[{j}]`: only text parts (`input_text`) are served here, not {kind!r}{hint}.",
                field=f"{where}[{j}].type",
            )
        texts.append(part["text"])
    return "".join(texts)


def _user_content(content: Any, where: str) -> tuple[str, tuple[Image, ...], list[str]]:
    """A user message's text, and its ``input_image`` parts placed in it with the field of each."""
    if not isinstance(content, list) or not any(
        isinstance(p, dict) and p.get("type") == "input_image" for p in content
    ):
        return _text_of(content, where), (), []
    texts: list[str] = []
    images: list[Image] = []
    fields: list[str] = []
    at = 0
    for j, part in enumerate(content):
        field = f"{where}[{j}]"
        if isinstance(part, dict) and part.get("type") == "input_image":
            url, detail = part.get("image_url"), part.get("detail")
            if not isinstance(url, str):
                raise BadRequest(
                    f"`{field}.image_url` is missing: send the image's address or data URL (`file_id` is not "
                    "served here).",
                    field=f"{field}.image_url",
                )
            if detail is not None and not isinstance(detail, str):
                raise BadRequest(f"`{field}.detail` must be low, high or auto.", field=f"{field}.detail")
            images.append(image_of(url, field, at=at, detail=detail, detail_field=f"{field}.detail"))
            fields.append(field)
        elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
            at += len(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else None
            raise BadRequest(
                f"`{field}`: only `input_text` and `input_image` parts are served here, not {kind!r}.",
                field=f"{field}.type",
            )
    return "".join(texts), tuple(images), fields


class _Input:
    """Input items as the turn's conversation, the client's system texts, and the field each came in."""

    def __init__(self) -> None:
        self.turns: list[ChatMessage] = []
        self.fields: list[str | None] = []
        self.system: list[str] = []
        self.system_fields: list[str] = []
        self.image_fields: list[str] = []

    def add(self, turn: ChatMessage, field: str | None) -> None:
        self.turns.append(turn)
        self.fields.append(field)

    def call(self, call: ToolCall) -> None:
        """A function call joins the assistant turn just before it: parallel calls, or text then calls."""
        last = self.turns[-1] if self.turns else None
        if last is not None and last.role == "assistant":
            self.turns[-1] = ChatMessage(role="assistant", content=last.content, tool_calls=(*last.tool_calls, call))
        else:
            self.add(ChatMessage(role="assistant", content=None, tool_calls=(call,)), None)

    def items(self, items: list[dict[str, Any]]) -> None:
        for i, item in enumerate(items):
            where = f"input[{i}]"
            kind = item.get("type", "message")
            if kind == "message":
                self.message(item, where)
            elif kind == "function_call":
                call_id, name = item.get("call_id"), item.get("name")
                if not isinstance(call_id, str) or not isinstance(name, str):
                    raise BadRequest(
                        f"`{where}`: a `function_call` item needs `call_id` and `name`.", field=f"{where}.call_id"
                    )
                arguments = item.get("arguments", "{}")
                if not isinstance(arguments, str):
                    raise BadRequest(f"`{where}.arguments` must be a JSON string.", field=f"{where}.arguments")
                self.call(ToolCall(id=call_id, name=name, arguments=arguments))
            elif kind == "function_call_output":
                call_id = item.get("call_id")
                if not isinstance(call_id, str):
                    raise BadRequest(
                        f"`{where}`: a `function_call_output` item needs the `call_id` it answers.",
                        field=f"{where}.call_id",
                    )
                output = _text_of(item.get("output", ""), f"{where}.output")
                self.add(
                    ChatMessage(role="tool", content=output, tool_call_id=call_id),
                    f"{where}.output" if output else None,
                )
            else:
                raise BadRequest(
                    f"`{where}.type` {kind!r} is not served here: send `message`, `function_call`, "
                    "`function_call_output` and `item_reference` items.",
                    field=f"{where}.type",
                )

    def message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role == "user":
            text, images, fields = _user_content(item.get("content", ""), f"{where}.content")
            self.add(ChatMessage(role="user", content=text, images=images), f"{where}.content")
            self.image_fields += fields
            return
        text = _text_of(item.get("content", ""), f"{where}.content")
        match role:
            case "system" | "developer":
                if text:
                    self.system.append(text)
                    self.system_fields.append(f"{where}.content")
            case "assistant":
                self.add(ChatMessage(role="assistant", content=text), None)
            case _:
                raise BadRequest(
                    f"`{where}.role` {role!r} is not a role: send user, assistant, system or developer.",
                    field=f"{where}.role",
                )


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


class _Response:
    """One response's identity and settings, and the response object made from them."""

    def __init__(self, data: ResponsesRequest) -> None:
        # Output items are named after their response, so an `item_reference` finds the response by its key.
        self._token = secrets.token_hex(16)
        self.id = f"resp_{self._token}"
        self._items = 0
        self.created_at = int(time.time())
        self.data = data
        text = msgspec.to_builtins(data.text) if data.text is not None else {}
        self.text = {"format": {"type": "text"}, **text}

    def item_id(self, prefix: str) -> str:
        """A new output item's id: the response's own random part, then the item's number in it."""
        self._items += 1
        return f"{prefix}_{self._token}{self._items:04x}"

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        data = self.data
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": data.model,
            "output": output,
            "instructions": data.instructions,
            "previous_response_id": data.previous_response_id,
            "tools": data.tools or [],
            "tool_choice": "auto" if data.tool_choice is None else msgspec.to_builtins(data.tool_choice),
            "parallel_tool_calls": data.parallel_tool_calls is not False,
            "temperature": data.temperature,
            "top_p": data.top_p,
            "max_output_tokens": data.max_output_tokens,
            "store": data.store,
            "text": self.text,
            "truncation": "disabled",
            "metadata": data.metadata or {},
            "usage": _usage(usage),
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
        }


def _ending(finish: str) -> tuple[str, str | None]:
    """The response's status for our finish reason, and why it is incomplete."""
    if finish == "length":
        return "incomplete", "max_output_tokens"
    if finish == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


class _Saver:
    """Keeps a finished response, when the request asked to store it: the conversation through its output."""

    def __init__(self, store: ResponseStore, caller: Caller, turns: _Input, prior: StoredResponse | None) -> None:
        self.store = store
        self.caller = caller
        self.messages = (*(prior.messages if prior else ()), *turns.turns)
        self.system = (*(prior.system if prior else ()), *turns.system)

    async def save(self, response_id: str, text: str, calls: tuple[ToolCall, ...], body: dict[str, Any]) -> None:
        answer = ChatMessage(role="assistant", content=text or None, tool_calls=calls)
        await self.store.save(response_id, self.caller.user_id, (*self.messages, answer), self.system, body)


def _output(response: _Response, result: TurnResult) -> list[dict[str, Any]]:
    output = []
    if result.text or not result.tool_calls:
        output.append(_message_item(response.item_id("msg"), result.text, "completed"))
    output.extend(_call_item(response.item_id("fc"), call, "completed") for call in result.tool_calls)
    return output


@dataclass
class _OpenCall:
    """A function call item being streamed: where it is in the output, and what it has said so far."""

    item_id: str
    index: int
    call_id: str
    name: str
    arguments: str = ""

    def tool_call(self) -> ToolCall:
        return ToolCall(id=self.call_id, name=self.name, arguments=self.arguments)


class _Events:
    """The Responses stream codec: our events in, OpenAI's numbered ``response.*`` events out, one write a batch.

    Text goes in one message item; each tool call in a function call item after it. The item open now is
    closed (its ``.done`` events) before the next one opens, and all of them before the response ends.
    """

    def __init__(self, response: _Response) -> None:
        self.response = response
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.message_id: str | None = None
        self.calls: dict[int, _OpenCall] = {}  # by our tool call index
        self.open_call: int | None = None
        self.usage: Usage | None = None
        self.ending: str | None = None  # the finish reason, from the end of the turn until the last event

    def event(self, kind: str, fields: dict[str, Any]) -> bytes:
        fields = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(fields) + b"\n\n"

    def _open_message(self, parts: list[bytes]) -> None:
        self._close_call(parts)
        self.message_id = self.response.item_id("msg")
        index = len(self.output)
        item = {"id": self.message_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        self.output.append(item)
        parts.append(self.event("response.output_item.added", {"output_index": index, "item": item}))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
        parts.append(self.event("response.content_part.added", {**where, "part": part}))

    def _close_message(self, parts: list[bytes]) -> None:
        if self.message_id is None:
            return
        index = next(i for i, item in enumerate(self.output) if item["id"] == self.message_id)
        text = "".join(self.text)
        where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
        parts.append(self.event("response.output_text.done", {**where, "text": text, "logprobs": []}))
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        parts.append(self.event("response.content_part.done", {**where, "part": part}))
        self.output[index] = _message_item(self.message_id, text, "completed")
        parts.append(self.event("response.output_item.done", {"output_index": index, "item": self.output[index]}))
        self.message_id = None

    def _call(self, delta: ToolCallDelta, parts: list[bytes]) -> None:
        call = self.calls.get(delta.index)
        if call is None:
            self._close_message(parts)
            self._close_call(parts)
            item_id, index = self.response.item_id("fc"), len(self.output)
            call = self.calls[delta.index] = _OpenCall(item_id, index, delta.id or _item_id("call"), delta.name or "")
            item = _call_item(item_id, call.tool_call(), "in_progress")
            self.output.append(item)
            self.open_call = delta.index
            parts.append(self.event("response.output_item.added", {"output_index": index, "item": item}))
        if delta.arguments:
            call.arguments += delta.arguments
            parts.append(
                self.event(
                    "response.function_call_arguments.delta",
                    {"item_id": call.item_id, "output_index": call.index, "delta": delta.arguments},
                )
            )

    def _close_call(self, parts: list[bytes]) -> None:
        if self.open_call is None:
            return
        call = self.calls[self.open_call]
        where = {"item_id": call.item_id, "output_index": call.index}
        parts.append(
            self.event(
                "response.function_call_arguments.done", {**where, "name": call.name, "arguments": call.arguments}
            )
        )
        self.output[call.index] = _call_item(call.item_id, call.tool_call(), "completed")
        parts.append(
            self.event("response.output_item.done", {"output_index": call.index, "item": self.output[call.index]})
        )
        self.open_call = None

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(call.tool_call() for call in self.calls.values())

    def encode(self, batch: list[TurnEvent]) -> bytes:
        parts: list[bytes] = []
        for event in batch:
            match event:
                case TextDelta(content=content):
                    if self.message_id is None:
                        self._open_message(parts)
                    self.text.append(content)
                    index = len(self.output) - 1
                    fields = {"item_id": self.message_id, "output_index": index, "content_index": 0}
                    parts.append(self.event("response.output_text.delta", {**fields, "delta": content, "logprobs": []}))
                case Start():
                    body = self.response.body("in_progress", [])
                    parts.append(self.event("response.created", {"response": body}))
                    parts.append(self.event("response.in_progress", {"response": body}))
                case ToolCallDelta():
                    self._call(event, parts)
                case Usage():
                    self.usage = event
                case Done(finish_reason=finish):
                    self._close_message(parts)
                    self._close_call(parts)
                    if not self.output:
                        self._open_message(parts)
                        self._close_message(parts)
                    self.ending = finish  # the last event goes out in `stream`, once the response is kept
                    return Last(b"".join(parts))
                case ErrorEvent(code=code, message=message):
                    return Last(b"".join(parts) + self.failed(code, message))
                case _:
                    assert_never(event)
        return b"".join(parts)

    def failed(self, code: str, message: str) -> bytes:
        body = self.response.body("failed", self.output, self.usage, error={"code": code, "message": message})
        return self.event("response.failed", {"response": body})

    async def _end(self, saver: _Saver | None, finish: str) -> bytes:
        """The response's last event: completed (or incomplete), said only once a stored response is kept,
        since a client may continue it at once; failed if it could not be."""
        status, reason = _ending(finish)
        final = self.response.body(status, self.output, self.usage, incomplete=reason)
        if saver is not None:
            try:
                await saver.save(self.response.id, "".join(self.text), self.tool_calls(), final)
            except PersonaRuntimeError:
                log.warning("response %s could not be stored", self.response.id, exc_info=True)
                return self.failed("store_failed", "The answer could not be stored: send the request again.")
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return self.event(kind, {"response": final})

    async def stream(self, turn: Turn, heartbeat: float, saver: _Saver | None) -> AsyncIterator[bytes]:
        async for data in encoded_stream(turn.batches(), heartbeat, self.encode):
            if self.ending is not None:
                finish, self.ending = self.ending, None
                data = Last(data + await self._end(saver, finish))
            yield data
        if self.ending is not None:  # the batch that ended the turn had nothing else to write
            finish, self.ending = self.ending, None
            yield Last(await self._end(saver, finish))


async def _dereferenced(store: ResponseStore, caller: Caller, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input with each ``item_reference`` replaced by the stored output item it names (a client that keeps its
    own history sends earlier answers back so); one that is not the caller's, or no longer stored, is a 404."""
    wanted: list[str] = []
    for i, item in enumerate(items):
        if item.get("type") == "item_reference":
            if not isinstance(item.get("id"), str):
                raise BadRequest(f"`input[{i}].id` is missing: name the item to refer to.", field=f"input[{i}].id")
            wanted.append(item["id"])
    if not wanted:
        return items
    found = await store.items(wanted, caller.user_id)
    resolved = []
    for i, item in enumerate(items):
        if item.get("type") != "item_reference":
            resolved.append(item)
        elif (stored := found.get(item["id"])) is not None:
            resolved.append(stored)
        else:
            raise NotFound(
                f"No stored item {item['id']!r}: the response it came in was never stored (`store` false), was "
                "deleted or has expired. Send the item itself instead.",
                field=f"input[{i}].id",
            )
    return resolved


async def _prior(store: ResponseStore, caller: Caller, data: ResponsesRequest) -> StoredResponse | None:
    if data.previous_response_id is None:
        return None
    prior = await store.get(data.previous_response_id, caller.user_id)
    if prior is None:
        raise NotFound(
            f"No stored response {data.previous_response_id!r}: it was never stored, was deleted or has expired.",
            field="previous_response_id",
        )
    return prior


def _turn_input(data: ResponsesRequest, turns: _Input, prior: StoredResponse | None) -> TurnInput:
    """The request as a turn: the stored conversation it continues, then its own input. The persona's
    prompt goes first, then ``instructions``, then the system texts of the input items."""
    earlier = prior.messages if prior else ()
    system = [data.instructions] if data.instructions else []
    system_fields = ["instructions"] if data.instructions else []
    for text in prior.system if prior else ():
        system.append(text)
        system_fields.append("previous_response_id")
    if not any(t.role != "assistant" for t in (*earlier, *turns.turns)):
        raise BadRequest("`input` has no user message.", field="input")
    tools = _tools(data.tools or [])
    return TurnInput(
        route="responses",
        messages=(*earlier, *turns.turns),
        message_fields=(*(None,) * len(earlier), *turns.fields),
        system=(*system, *turns.system),
        system_fields=(*system_fields, *turns.system_fields),
        tools=tools,
        tool_fields=tuple(f"tools[{i}]" for i in range(len(tools))),
        image_fields=(*("previous_response_id",) * sum(len(m.images) for m in earlier), *turns.image_fields),
        temperature=data.temperature,
        top_p=data.top_p,
        max_tokens=data.max_output_tokens,
        persona_name=persona_name_of_model(data.model),
        options=_options(data),
        option_fields=_OPTION_FIELDS,
    )


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["openai-compatible"]

    @post("/", status_code=200, operation_class=Streams)
    async def create(
        self, data: JSONBody[ResponsesRequest], request: GuardedRequest, memory: MemoryHeader = None
    ) -> Response[Any]:
        caller, resources = request.caller, request.resources
        _unserved(data)
        store = resources.responses
        turns = _Input()
        if isinstance(data.input, str):
            turns.add(ChatMessage(role="user", content=data.input), "input")
        else:
            turns.items(await _dereferenced(store, caller, data.input))
        prior = await _prior(store, caller, data)
        saver = _Saver(store, caller, turns, prior) if data.store else None
        turn = await resources.chat.run(caller, with_memory(_turn_input(data, turns, prior), memory))
        headers = persona_headers(turn.start)
        response = _Response(data)
        if data.stream:
            events = _Events(response)
            return sse_response(events.stream(turn, resources.settings.heartbeat_seconds, saver), headers)
        result = await turn.collect()
        status, reason = _ending(result.finish_reason)
        body = response.body(status, _output(response, result), result.usage, incomplete=reason)
        if saver is not None:
            await saver.save(response.id, result.text, result.tool_calls, body)
        return Response(body, headers=headers)

    @get("/{response_id:str}")
    async def read(self, response_id: FromPath[str], caller: CallerDep, resources: ResourcesDep) -> dict[str, Any]:
        stored = await resources.responses.get(response_id, caller.user_id)
        if stored is None:
            raise NotFound(f"No stored response {response_id!r}.", field="response_id")
        return stored.body

    @delete("/{response_id:str}", status_code=200)
    async def remove(self, response_id: FromPath[str], caller: CallerDep, resources: ResourcesDep) -> dict[str, Any]:
        if not await resources.responses.delete(response_id, caller.user_id):
            raise NotFound(f"No stored response {response_id!r}.", field="response_id")
        return {"id": response_id, "object": "response.deleted", "deleted": True}
