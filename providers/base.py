"""The provider protocol and the provider-neutral request it takes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from core.events import ProviderEvent, TextDelta, ToolCallDelta

__all__ = [
    "ChatMessage",
    "Image",
    "Provider",
    "ProviderConfig",
    "ProviderRequest",
    "ToolCall",
    "ToolSpec",
    "assemble_tool_calls",
    "batches_of",
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
    """A function the model may call; ``parameters`` is its JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})


class ProviderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one streaming call needs, independent of any vendor's API.

    The system prompt travels in its own field so that each adapter can put it where its API
    wants it. An empty ``model`` means the provider's default model. Sampling parameters left at
    ``None`` are not sent at all. Adapters whose API needs a marker to cache a prompt's prefix (Anthropic)
    place it after ``cached_system_chars`` and ``cached_tools``.
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
    (see ``batches_of``). The built-in HTTP adapters do.
    """

    name: str
    kind: str
    default_model: str

    def build_body(self, request: ProviderRequest) -> dict[str, Any]: ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]: ...

    async def aclose(self) -> None: ...


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
