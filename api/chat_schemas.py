"""Wire types of the chat and conversation APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from msgspec import UNSET, Meta, Struct, UnsetType

from core.events import PersonaRef
from personas.releases import LABEL_PATTERN

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "ConversationOut",
    "ConversationResponse",
    "ConversationsResponse",
    "MessageOut",
    "StartConversationRequest",
    "TokenUsage",
]

ProviderName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
ModelName = Annotated[str, Meta(min_length=1, max_length=200)]
VersionNumber = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Label = Annotated[str, Meta(pattern=LABEL_PATTERN)]


class ChatRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    message: str
    conversation_id: UUID | None = None
    persona_id: UUID | None = None
    stream: bool = False
    provider: ProviderName | None = None
    model: ModelName | None = None
    # Keep generating when the client hangs up, so the answer can be resumed and is stored complete.
    resumable: bool = False
    # False: this turn neither uses the user's memories nor extracts any (contract section 15).
    memory: bool = True
    # A label of the persona (`production`, `beta`), or a version number for its owner and admins (section 16).
    persona_version: VersionNumber | Label | None = None


class StartConversationRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A conversation to open: with ``persona_id`` (else the caller's persona), by its greeting ``greeting``
    (an index into the persona's ``greetings``; left out: the first, or none when it has none)."""

    persona_id: UUID | None = None
    greeting: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None


class CancelResponse(Struct, frozen=True, kw_only=True):
    message: str
    # The answer's stored status now: `incomplete` once stopped.
    status: str
    success: bool = True


class TokenUsage(Struct, frozen=True, kw_only=True):
    input_tokens: int
    output_tokens: int
    # Of the input tokens, those the provider read from its prompt cache.
    cached_input_tokens: int = 0


class ChatResponse(Struct, frozen=True, kw_only=True):
    success: bool
    response: str
    conversation_id: UUID | None
    message_id: UUID | None
    persona: PersonaRef
    persona_source: str
    provider: str
    model: str
    usage: TokenUsage | None
    finish_reason: str
    # Only previews say `"stored": false`; only answers that call tools carry `tool_calls`.
    stored: bool | UnsetType = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET


class SummaryOut(Struct, frozen=True, kw_only=True):
    """The rolling summary of the turns that fell out of the window, and the last message it covers."""

    content: str
    covers_until_message_id: UUID | None
    updated_at: datetime | None


class ConversationOut(Struct, frozen=True, kw_only=True):
    id: UUID
    title: str
    persona_id: UUID | None
    created_at: datetime
    updated_at: datetime
    # Shown on one conversation (GET /conversations/{id}), not in the list.
    summary: SummaryOut | UnsetType | None = UNSET


class ConversationsResponse(Struct, frozen=True, kw_only=True):
    conversations: list[ConversationOut]
    total: int
    success: bool = True


class MessageOut(Struct, frozen=True, kw_only=True):
    id: UUID
    role: str
    content: str
    status: str
    persona_id: UUID | None
    persona_version: int | None
    persona_source: str | None
    provider: str | None
    model: str | None
    usage: dict[str, int] | None
    latency_ms: int | None
    created_at: datetime
    # How the persona's version was chosen for an answer (section 16); null for questions.
    variant: str | None = None
    # An answer's account of what it was given (contract section 13); null for questions.
    context: dict[str, Any] | None = None


class ConversationResponse(Struct, frozen=True, kw_only=True):
    conversation: ConversationOut
    messages: list[MessageOut]
    success: bool = True
