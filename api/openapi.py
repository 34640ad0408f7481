"""What /schema tells: strict request bodies, either-or persona choices, and each route's errors in its own shape."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from litestar import Litestar
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.typing import FieldDefinition
from msgspec import UNSET, Struct, UnsetType

from core.events import Done, ErrorEvent, Start, TextDelta, Usage
from runtime.authoring.service import PersonaChoice

__all__ = [
    "AnthropicErrorBody",
    "ErrorBody",
    "ImageAnswer",
    "ImageBody",
    "ImportBody",
    "OpenAIErrorBody",
    "OptionalBody",
    "PngExport",
    "Streams",
    "StrictStructSchemaPlugin",
    "answers",
    "document_errors",
]


class ErrorDetail(Struct, frozen=True, kw_only=True):
    code: str
    details: Any
    field: str | UnsetType = UNSET


class ErrorBody(Struct, frozen=True, kw_only=True):
    """An error on /api/v1: ``message`` says what went wrong and how to fix it; ``error.field`` names the input."""

    success: Literal[False]
    message: str
    error: ErrorDetail


class OpenAIErrorDetail(Struct, frozen=True, kw_only=True):
    message: str
    type: str
    code: str | None
    param: str | None


class OpenAIErrorBody(Struct, frozen=True, kw_only=True):
    """An error on /v1/chat/completions and /v1/models, in OpenAI's shape."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(Struct, frozen=True, kw_only=True):
    type: str
    message: str


class AnthropicErrorBody(Struct, frozen=True, kw_only=True):
    """An error on /v1/messages and /v1/messages/count_tokens, in Anthropic's shape."""

    type: Literal["error"]
    error: AnthropicErrorDetail


# Bodies that name their persona one way or the other: exactly one of the two fields is set (not null).
_EITHER_OR = {PersonaChoice: ("persona_id", "persona")}


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's Struct schemas, plus what msgspec enforces: unknown fields refused, either-or fields."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct_type = field_definition.type_
        if msgspec.inspect.type_info(struct_type).forbid_unknown_fields:  # type: ignore[attr-defined]
            schema.additional_properties = False
        for base, fields in _EITHER_OR.items():
            if issubclass(struct_type, base):
                schema.one_of = [self._only(struct_type, chosen, fields, schema_creator) for chosen in fields]
        return schema

    @staticmethod
    def _only(struct_type: type, chosen: str, fields: tuple[str, ...], schema_creator: Any) -> Schema:
        """The branch where ``chosen`` is set: its own type, without ``| None``; the other fields null or absent."""
        annotation = typing.get_type_hints(struct_type, include_extras=True)[chosen]
        (kept,) = [t for t in typing.get_args(annotation) if t is not type(None)]
        null = Schema(type=OpenAPIType.NULL)
        properties: dict[str, Any] = {name: null for name in fields if name != chosen}
        if chosen != "persona_id":
            properties["version"] = null  # a version goes with a saved persona only
        properties[chosen] = schema_creator.for_field_definition(FieldDefinition.from_annotation(kept))
        return Schema(required=[chosen], properties=properties)


@dataclass
class OptionalBody(Operation):
    """An operation whose JSON body may be left out (the handler takes ``data: ... | None = None``)."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


@dataclass
class ImportBody(Operation):
    """The import route reads its body itself: a JSON document or card, a PNG card, or a form with one file."""

    def __post_init__(self) -> None:
        binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        form = Schema(type=OpenAPIType.OBJECT, properties={"file": binary}, required=["file"])
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT)),
                "image/png": OpenAPIMediaType(schema=binary),
                "multipart/form-data": OpenAPIMediaType(schema=form),
            },
        )


_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)


@dataclass
class ImageBody(Operation):
    """The avatar route reads its body itself: the image's bytes, whose first bytes (not the header) say their type."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True, content={kind: OpenAPIMediaType(schema=_BINARY) for kind in _IMAGE_TYPES}
        )


@dataclass
class ImageAnswer(Operation):
    """An operation whose 200 is an image's bytes, in the type it was stored as."""

    def __post_init__(self) -> None:
        success = (self.responses or {}).get("200")
        if isinstance(success, OpenAPIResponse):
            success.content = {kind: OpenAPIMediaType(schema=_BINARY) for kind in _IMAGE_TYPES}


@dataclass
class PngExport(Operation):
    """The export route: JSON (our document, a card), or a PNG card's bytes with ``format=png``."""

    def __post_init__(self) -> None:
        success = (self.responses or {}).get("200")
        if isinstance(success, OpenAPIResponse):
            success.content = {**(success.content or {}), "image/png": OpenAPIMediaType(schema=_BINARY)}


def answers(body: Any, description: str) -> dict[int, ResponseSpec]:
    """The documented 200 of a handler whose return annotation (``Response[Any]``, bytes) does not say what it sends."""
    return {200: ResponseSpec(data_container=body, description=description, generate_examples=False)}


@dataclass
class Streams(Operation):
    """An operation that answers JSON, or Server-Sent Events when the body says ``"stream": true`` (the replay
    route answers events only).

    For ``text/event-stream`` the schema describes one event, ``{"event", "id", "data"}``, as OpenAPI 3.1 tools
    read it (3.2 calls it ``itemSchema``): ``data`` is the line's text, and the JSON object it carries is its
    ``contentSchema``, in the route's own vocabulary.
    """

    def __post_init__(self) -> None:
        success = (self.responses or {}).get("200")
        if not isinstance(success, OpenAPIResponse):
            return
        if success.content is None:
            success.content = {}
        success.content["text/event-stream"] = OpenAPIMediaType(schema=_stream_schema(self.operation_id or ""))


# Each SSE vocabulary as JSON Schema: our turn events (as core.events encodes them), OpenAI's chunks, Anthropic's.
_OUR_EVENTS = (Start, TextDelta, Usage, Done, ErrorEvent)
_DONE_FRAME = {
    "type": "object",
    "description": "The stream's last line, `data: [DONE]`",
    "properties": {"data": {"const": "[DONE]"}},
    "required": ["data"],
}
_OPENAI_CHUNK = {
    "type": "object",
    "description": "A `chat.completion.chunk`, or `{\"error\": {...}}` when the answer fails after it started",
    "anyOf": [
        {"properties": {"object": {"const": "chat.completion.chunk"}, "choices": {"type": "array"}},
         "required": ["id", "object", "created", "model", "choices"]},
        {"properties": {"error": {"type": "object"}}, "required": ["error"]},
    ],
}  # fmt: skip
_ANTHROPIC_EVENT = {
    "type": "object",
    "description": "One of Anthropic's stream events (`message_start` ... `message_stop`, `ping`, `error`)",
    "properties": {"type": {"type": "string"}},
    "required": ["type"],
}
_RESPONSES_EVENT = {
    "type": "object",
    "description": "One of OpenAI's Responses events (`response.created` ... `response.completed`, `response.failed`)",
    "properties": {"type": {"type": "string", "pattern": "^response\\."}, "sequence_number": {"type": "integer"}},
    "required": ["type", "sequence_number"],
}


def _stream_schema(operation_id: str) -> Schema:
    if operation_id.startswith("V1ChatCompletions"):
        frames = [_frame(None, _OPENAI_CHUNK), _DONE_FRAME]
        what = "OpenAI's chunks, then `data: [DONE]`"
    elif operation_id.startswith("V1Responses"):
        frames = [_frame({"type": "string", "pattern": "^response\\."}, _RESPONSES_EVENT)]
        what = "OpenAI's Responses events; `event` is the `type` of `data`, and `sequence_number` counts them"
    elif operation_id.startswith("V1Messages"):
        frames = [_frame({"type": "string"}, _ANTHROPIC_EVENT)]
        what = "Anthropic's events; `event` is the `type` of `data`"
    else:
        compared = operation_id.startswith("ApiV1ChatPersonasCompare")
        frames = [*_our_frames(candidate=compared), _DONE_FRAME]
        what = "the turn's events, named by `event` and numbered by `id`, then `data: [DONE]`" + (
            "; each candidate's events carry its index in `candidate`" if compared else ""
        )
    return _schema({"description": f"One Server-Sent Event: {what}.", "oneOf": frames})


def _frame(event: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    # `data` is text on the wire; a JSON object always starts with "{", which also tells it from [DONE].
    json_text = {"type": "string", "pattern": "^\\{", "contentMediaType": "application/json", "contentSchema": data}
    properties: dict[str, Any] = {"data": json_text, "id": {"type": "string"}}
    if event is not None:
        properties["event"] = event
    return {
        "type": "object",
        "properties": properties,
        "required": ["data"] if event is None else ["event", "data"],
    }


def _our_frames(*, candidate: bool) -> list[dict[str, Any]]:
    schemas, components = msgspec.json.schema_components(_OUR_EVENTS, ref_template="{name}")
    frames = []
    for event_type, schema in zip(_OUR_EVENTS, schemas, strict=True):
        data = _inlined(schema, components)
        if candidate:
            data["properties"]["candidate"] = {"type": "integer", "minimum": 0}
            data["required"] = [*data["required"], "candidate"]
        frames.append(_frame({"const": event_type.__struct_config__.tag}, data))
    return frames


def _inlined(schema: Any, components: dict[str, Any]) -> Any:
    """``schema`` with every ``$ref`` replaced by the component it names (the event types do not recurse)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(components[schema["$ref"]], components)
        return {key: _inlined(value, components) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(item, components) for item in schema]
    return schema


_SCHEMA_KEYS = {
    "anyOf": "any_of",
    "oneOf": "one_of",
    "additionalProperties": "additional_properties",
    "contentMediaType": "content_media_type",
    "contentSchema": "content_schema",
}


_PLAIN_KEYWORDS = {
    "const",
    "required",
    "additionalProperties",
    "title",
    "description",
    "default",
    "minimum",
    "pattern",
    "contentMediaType",
}


def _schema(value: dict[str, Any]) -> Schema:
    """A JSON Schema dict as Litestar's ``Schema`` (the keywords the stream schemas use)."""
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = _SCHEMA_KEYS.get(key, key)
        if key == "type":
            item = OpenAPIType(item)
        elif key == "format":
            item = OpenAPIFormat(item)
        elif key in ("anyOf", "oneOf"):
            item = [_schema(branch) for branch in item]
        elif key == "properties":
            item = {prop: _schema(schema) for prop, schema in item.items()}
        elif key in ("items", "contentSchema"):
            item = _schema(item)
        elif key == "enum":
            item = list(item)
        elif key not in _PLAIN_KEYWORDS:
            raise ValueError(f"JSON Schema keyword {key!r} has no translation here")
        fields[name] = item
    return Schema(**fields)


_DESCRIPTIONS = {
    400: "Bad input: the message names the field (`error.field` on /api/v1, `param` on /v1)",
    401: "Missing, unknown, revoked or expired API key",
    403: "The persona belongs to another user (only its owner or an admin may change it), or an admin-only route",
    404: "Not found, or not visible to the caller; on a replay, `not_streamed` for a message answered without a stream",
    409: "Conflicts with the current state: a taken name, an answer that already ended or was stopped, an answer "
    "running on another instance that does not share its stream (no Redis), or the default persona Mu that "
    "cannot be restored while another active persona is named Mu",
    410: "The stream ended longer ago than `STREAM_RETENTION_SECONDS`, or its recording was lost with the instance "
    "that held it (the message says which); the message is in its conversation",
    413: "The request body is too large",
    415: "The upload is not of a type the route takes (told by its bytes); `error.field` names it",
    429: "A rate limit of the key or persona (or the provider's) was reached; see `Retry-After`",
    500: "Internal error; it has been logged",
    502: "The LLM provider failed",
    503: "The database is unavailable; try again in a moment",
    504: "The LLM provider timed out",
}

# Routes that call a provider, and routes that act on a persona that may belong to someone else.
_PROVIDER_ROUTES = {
    ("POST", "/api/v1/chat"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/responses"),
    ("POST", "/api/v1/chat/personas/preview"),
    ("POST", "/api/v1/chat/personas/compare"),
    ("POST", "/api/v1/chat/personas/{persona_id:str}/tests/run"),
}
# Routes whose body names a persona the caller must be able to see.
_NAMES_A_PERSONA = {
    ("POST", "/api/v1/chat/personas/set"),
    ("POST", "/api/v1/memories"),
    ("POST", "/api/v1/chat/conversations"),
    ("POST", "/v1/messages/count_tokens"),
}
_CONFLICTS = {
    ("POST", "/api/v1/chat/personas"),
    ("PUT", "/api/v1/chat/personas/{persona_id:str}"),
    ("POST", "/api/v1/chat/personas/import"),
    ("POST", "/api/v1/chat/personas/{persona_id:str}/versions/{version:str}/restore"),
    ("POST", "/api/v1/admin/users"),
}
# An answer that ended before the cancel came; a JSON answer stopped by a cancel (`cancelled`); a replay of an
# answer running on an instance that alone holds its stream.
_ENDED = {
    ("POST", "/api/v1/chat/messages/{message_id:str}/cancel"),
    ("POST", "/api/v1/chat"),
    ("GET", "/api/v1/chat/messages/{message_id:str}/events"),
}
# Routes that restore the default persona when it is gone, which a persona now named Mu blocks.
_RESTORES_DEFAULT = {
    ("GET", "/api/v1/chat/personas/current"),
    ("POST", "/api/v1/chat/personas/initialize-default"),
    ("POST", "/api/v1/chat/conversations"),  # opened with the default persona when none is named or preferred
}
_GONE = {("GET", "/api/v1/chat/messages/{message_id:str}/events")}
# Routes whose body is an upload of a kind told by its bytes.
_UPLOADS = {("PUT", "/api/v1/chat/personas/{persona_id:str}/avatar")}
# A persona's routes that whoever sees the persona may read.
_READABLE = {"/api/v1/chat/personas/{persona_id:str}", "/api/v1/chat/personas/{persona_id:str}/avatar"}


_PERSONA = "/api/v1/chat/personas/{persona_id:str}"


def _statuses(method: str, path: str, handler: HTTPRouteHandler) -> set[int]:
    signature = handler.parsed_fn_signature.parameters
    has_body = "data" in signature or path.endswith("/import") or (method, path) in _UPLOADS
    statuses = {401, 500, 503}
    if has_body:
        statuses |= {400, 413}
    checked = ("limit", "offset", "format", "persona_id", "since", "until", "by", "user_id")
    if "{" in path or any(name in signature for name in checked):
        statuses.add(400)
    if "{" in path or (method, path) in _PROVIDER_ROUTES | _NAMES_A_PERSONA:
        statuses.add(404)  # a path's id, or a conversation or persona named in the body
    # A persona's own routes are for its owner and admins, but for reading it.
    persona_scoped = path.startswith(_PERSONA) and not (method == "GET" and path in _READABLE)
    # Only admins may set `is_default` (on create, update and restore), manage users or loosen a key's limits.
    loosening = (method, path) == ("POST", "/api/v1/keys")
    # Another user's usage (`user_id`) is for admins.
    others = (method, path) == ("GET", "/api/v1/usage")
    if (
        persona_scoped
        or loosening
        or others
        or path.startswith("/api/v1/admin")
        or (method, path) in _PROVIDER_ROUTES | _CONFLICTS
    ):
        statuses.add(403)
    if (method, path) in _CONFLICTS | _ENDED | _RESTORES_DEFAULT:
        statuses.add(409)
    if (method, path) in _GONE:
        statuses.add(410)
    if (method, path) in _UPLOADS:
        statuses.add(415)
    if (method, path) in _PROVIDER_ROUTES:
        statuses |= {429, 502, 504}
    return statuses


def _error_body(path: str) -> type[Struct]:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return AnthropicErrorBody
    if path.startswith("/v1/"):
        return OpenAIErrorBody
    return ErrorBody


def document_errors(app: Litestar) -> None:
    """Give every route that needs a key the error answers it can give, in its prefix's error shape."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if (
                not isinstance(handler, HTTPRouteHandler)
                or handler.opt.get("exclude_from_auth")
                or not handler.include_in_schema
            ):
                continue
            body = _error_body(route.path)
            responses = dict(handler.responses or {})
            for method in handler.http_methods:
                for status in _statuses(method, route.path, handler):
                    responses.setdefault(
                        status,
                        ResponseSpec(data_container=body, description=_DESCRIPTIONS[status], generate_examples=False),
                    )
            handler.responses = responses
