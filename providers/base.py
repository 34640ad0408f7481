"""The provider protocol and the provider-neutral request it takes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from core.events import ProviderEvent, TextDelta, ToolCallDelta

__all__ = [
    "NO_OPTIONS",
    "ChatMessage",
    "Image",
    "Options",
    "Provider",
    "ProviderConfig",
    "ProviderRequest",
    "ResponseFormat",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "assemble_tool_calls",
    "batches_of",
    "refusal",
]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A complete tool call the assistant made; ``arguments`` is its JSON text."""

    id: str
    name: str
    arguments: str


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """An image in a user's message.

    ``url`` is a web address the provider fetches, or the image itself as a ``data:`` URL
    (``data:image/png;base64,...``); each adapter puts it in its API's own form. ``at`` is where the image
    stands in the message's ``content``, as a character offset (0: before the text). ``detail`` is OpenAI's
    ``low``, ``high`` or ``auto`` (None: not given; Anthropic has no such choice). ``width`` and ``height``
    are known when the image's own header gave them (a data URL), for counting its tokens.
    """

    url: str
    at: int = 0
    detail: Literal["low", "high", "auto"] | None = None
    width: int | None = None
    height: int | None = None

    @property
    def inline(self) -> bool:
        return self.url.startswith("data:")

    def media(self) -> tuple[str, str]:
        """A data URL's media type and base64 data (``image/png``, ``iVBOR...``)."""
        head, _, data = self.url.partition(",")
        return head[len("data:") :].split(";", 1)[0], data


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One turn of the conversation.

    An assistant turn may carry ``tool_calls``; a ``tool`` turn answers one of them and names it
    in ``tool_call_id``. A user turn may carry ``images`` (each placed in its text by ``Image.at``).
    System prompts are not messages: see ``ProviderRequest.system``.
    """

    role: Literal["user", "assistant", "tool"]
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    images: tuple[Image, ...] = ()

    def pieces(self) -> list[str | Image]:
        """The message's text and images in the order they were sent (blank text between them left out: Anthropic
        refuses a whitespace-only text block)."""
        text, start = self.content or "", 0
        out: list[str | Image] = []
        for image in self.images:
            at = min(max(image.at, start), len(text))
            if text[start:at].strip():
                out.append(text[start:at])
            out.append(image)
            start = at
        if text[start:].strip():
            out.append(text[start:])
        return out


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A function the model may call; ``parameters`` is its JSON schema. ``strict`` (when the client set it) asks
    the provider to hold the call's arguments to that schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolChoice(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the model may call tools: ``auto`` (it decides), ``none``, ``required`` (some tool) or ``tool``
    (the one named ``name``)."""

    type: Literal["auto", "none", "required", "tool"]
    name: str | None = None


class ResponseFormat(msgspec.Struct, frozen=True, kw_only=True):
    """The form of the answer: ``text``, any JSON object (``json_object``), or JSON matching ``json_schema``,
    OpenAI's ``{"name", "schema", "strict"?, "description"?}`` object as the client sent it."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @property
    def schema(self) -> dict[str, Any]:
        schema = (self.json_schema or {}).get("schema")
        return schema if isinstance(schema, dict) else {}


class Options(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A client's parameters beyond sampling, decoded once per request; None (or empty) is not sent.

    They are named as OpenAI's Chat Completions names them. ``openai`` holds OpenAI's own parameters that have
    no provider-neutral meaning (``reasoning_effort``, ``service_tier``, ``metadata``, ...), as sent. A
    provider says which it takes with ``refuses`` (see :func:`refusal`); the runtime refuses the rest with a
    400 before any call, so none is dropped without a word. ``max_completion_tokens`` says the client named
    the answer's limit so (OpenAI's newer name for ``max_tokens``).
    """

    stop: str | tuple[str, ...] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_completion_tokens: bool = False
    openai: dict[str, Any] = msgspec.field(default_factory=dict)

    def given(self) -> list[str]:
        """The names of the options set, in field order (``openai``'s by their own names)."""
        names = [
            name
            for name in self.__struct_fields__
            if name not in ("openai", "max_completion_tokens") and getattr(self, name) is not None
        ]
        return names + list(self.openai)


NO_OPTIONS = Options()


class ProviderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one streaming call needs, independent of any vendor's API.

    The system prompt travels in its own field so that each adapter can put it where its API
    wants it. An empty ``model`` means the provider's default model. Sampling parameters left at
    ``None`` are not sent at all, nor are ``options`` left unset. Adapters whose API needs a marker to
    cache a prompt's prefix (Anthropic) place it after ``cached_system_chars`` and ``cached_tools``.
    """

    model: str
    system: str | None
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    # The stable prefix a provider may cache: the first ``cached_system_chars`` characters of ``system``
    # and the first ``cached_tools`` tools (the persona's own). Zero: ask for no caching.
    cached_system_chars: int = 0
    cached_tools: int = 0
    # Headers of the turn's trace context (W3C ``traceparent``, ``tracestate``) for the upstream request, when
    # traces are on: the provider's own spans are then children of the turn's.
    trace_context: tuple[tuple[str, str], ...] = ()
    options: Options = NO_OPTIONS


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach one configured provider.

    ``name`` is what personas and requests refer to; ``kind`` picks the adapter. The repr never
    shows ``api_key``, so a config can be logged safely.
    """

    name: str
    kind: str
    api_key: str | None = None
    base_url: str | None = None
    default_model: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 10.0
    # Upstream connections one provider may hold open at once (in each worker): one per open stream.
    max_connections: int = 10_000

    def __repr__(self) -> str:
        key = "None" if self.api_key is None else "'***'"
        return (
            f"ProviderConfig(name={self.name!r}, kind={self.kind!r}, api_key={key}, "
            f"base_url={self.base_url!r}, default_model={self.default_model!r}, "
            f"timeout={self.timeout!r}, connect_timeout={self.connect_timeout!r}, "
            f"max_connections={self.max_connections!r})"
        )

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [
            ("name", self.name),
            ("kind", self.kind),
            ("api_key", None if self.api_key is None else "***"),
            ("base_url", self.base_url),
            ("default_model", self.default_model),
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("max_connections", self.max_connections),
        ]


@runtime_checkable
class Provider(Protocol):
    """One LLM API behind one streaming method.

    ``stream`` is an async generator of ``ProviderEvent``s ending with ``Finish``; it raises
    ``core.errors.ProviderError`` subclasses, before the first event or in the middle of the
    stream. Consumers that may stop early should close it (``contextlib.aclosing``) so the
    upstream request is cancelled at once. ``build_body`` returns the exact JSON body ``stream``
    would POST upstream, for dry runs.

    A provider may also offer ``interrupt(exc)``, ending the streams under way with ``exc`` (the runtime
    calls it when its shutdown grace runs out), and ``stream_batches(request)``, the same events as lists, one list per
    read of the upstream connection: the runtime then writes each list to its client at once
    (see ``batches_of``). The built-in HTTP adapters do. And ``refuses(options)``, the first of a request's
    :class:`Options` it cannot take and why (see :func:`refusal`); one without it takes none.
    """

    name: str
    kind: str
    default_model: str

    def build_body(self, request: ProviderRequest) -> dict[str, Any]: ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]: ...

    async def aclose(self) -> None: ...


def refusal(provider: Provider, options: Options) -> tuple[str, str] | None:
    """The first option of ``options`` that ``provider`` cannot take, and why; None when it takes them all.
    A provider without ``refuses`` (a plugin) takes none, since it would drop them without a word, but for those
    that ask for what it does anyway."""
    if options is NO_OPTIONS:
        return None
    refuses = getattr(provider, "refuses", None)
    if refuses is not None:
        refused: tuple[str, str] | None = refuses(options)
        return refused
    given = [name for name in options.given() if not _asks_for_the_default(options, name)]
    if not given:
        return None
    return given[0], f"provider {provider.name!r} (kind {provider.kind!r}) takes no parameter beyond sampling"


def _asks_for_the_default(options: Options, name: str) -> bool:
    """Whether the option asks for what every provider does unasked (the model decides on tools, may call several,
    answers text), as clients send it with every request (the Vercel AI SDK's ``tool_choice`` ``auto``)."""
    if name == "tool_choice":
        return options.tool_choice is not None and options.tool_choice.type == "auto"
    if name == "parallel_tool_calls":
        return options.parallel_tool_calls is True
    if name == "response_format":
        return options.response_format is not None and options.response_format.type == "text"
    return False


def batches_of(provider: Provider, request: ProviderRequest) -> AsyncIterator[list[ProviderEvent]]:
    """The provider's events for ``request`` in lists: its own batches when it has them, else one by one."""
    batched = getattr(provider, "stream_batches", None)
    if batched is not None:
        stream: AsyncIterator[list[ProviderEvent]] = batched(request)
        return stream
    return _one_by_one(provider.stream(request))


async def text_of(provider: Provider, request: ProviderRequest) -> str:
    """The whole text ``provider`` answers ``request`` with (for the runtime's own asks: summaries, memories)."""
    text: list[str] = []
    async with contextlib.aclosing(batches_of(provider, request)) as batches:  # type: ignore[type-var]
        async for batch in batches:
            text.extend(event.content for event in batch if isinstance(event, TextDelta))
    return "".join(text)


async def _one_by_one(events: AsyncIterator[ProviderEvent]) -> AsyncIterator[list[ProviderEvent]]:
    async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
        async for event in stream:
            yield [event]


def assemble_tool_calls(events: Iterable[ProviderEvent]) -> tuple[ToolCall, ...]:
    """Join the ``ToolCallDelta`` pieces of a stream into complete calls, in index order."""
    parts: dict[int, tuple[list[str | None], list[str]]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            ident, arguments = parts.setdefault(event.index, ([None, None], []))
            if event.id:
                ident[0] = event.id
            if event.name:
                ident[1] = event.name
            arguments.append(event.arguments)
    return tuple(
        ToolCall(id=ident[0] or f"call_{index}", name=ident[1] or "", arguments="".join(arguments))
        for index, (ident, arguments) in sorted(parts.items())
    )
