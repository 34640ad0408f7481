"""Persona domain types: what a persona is, what a caller may write, and who is calling."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "CONTENT_FIELDS",
    "MU_ID",
    "WRITABLE_FIELDS",
    "Caller",
    "Fallback",
    "Limits",
    "ModelSettings",
    "Persona",
    "PersonaDraft",
    "PersonaPatch",
    "Tool",
    "Visibility",
]

# Mu, the default persona, has a fixed id so that creating it is idempotent across instances.
MU_ID = UUID("00000000-0000-4000-8000-00000000006d")

Visibility = Literal["public", "private"]

Name = Annotated[str, Meta(min_length=1, max_length=100)]
Description = Annotated[str, Meta(max_length=4000)]
SystemPrompt = Annotated[str, Meta(min_length=1, max_length=100_000)]
ProviderName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
ModelName = Annotated[str, Meta(min_length=1, max_length=200)]
ToolName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Temperature = Annotated[float, Meta(ge=0, le=2)]
TopP = Annotated[float, Meta(ge=0, le=1)]
MaxTokens = Annotated[int, Meta(ge=1, le=1_000_000)]
ContextWindow = Annotated[int, Meta(ge=256, le=10_000_000)]
ChangeNote = Annotated[str, Meta(max_length=1000)]
# A rate limit or budget: a positive whole number (Redis counts it exactly up to 2**53).
LimitValue = Annotated[int, Meta(ge=1, le=1_000_000_000_000)]
# Round-trip data (an imported card's own fields): kept and versioned with the persona, never rendered.
Extensions = dict[str, Any]


class Fallback(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A provider and model to try when the persona's own provider fails before answering."""

    provider: ProviderName
    model: ModelName | None = None


class ModelSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which provider and model answer for a persona, and with which sampling parameters."""

    provider: ProviderName | None = None
    model: ModelName | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    fallbacks: Annotated[list[Fallback], Meta(max_length=5)] = msgspec.field(default_factory=list)
    # Ask providers that need a marker (Anthropic) to cache the persona's system prompt and tools.
    prompt_cache: bool = True
    # Tokens the model takes, request and answer together (section 13); None: the table of well-known models.
    context_window: ContextWindow | None = None
    # Summarize the turns that fall out of the window.
    summaries: bool = True


class Limits(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rate limits and token budgets of a key or a persona; None is no limit.

    A key's bound everything done with it; a persona's bound each user's use of that persona.
    """

    requests_per_minute: LimitValue | None = None
    tokens_per_minute: LimitValue | None = None
    tokens_per_day: LimitValue | None = None

    @property
    def any(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or (self.tokens_per_day is not None)
        )


class Tool(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: ToolName
    description: Annotated[str, Meta(max_length=4000)] = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})


class Persona(Struct, frozen=True, kw_only=True):
    """A persona as stored, and as the API shows it (``system_prompt`` hidden from non-owners)."""

    id: UUID
    name: str
    description: str
    system_prompt: str | None
    personality_traits: dict[str, Any]
    capabilities: dict[str, Any]
    model_settings: ModelSettings
    tools: list[Tool]
    visibility: Visibility
    extensions: Extensions = msgspec.field(default_factory=dict)
    limits: Limits = msgspec.field(default_factory=Limits)
    is_active: bool
    is_default: bool
    version: int
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class PersonaDraft(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body that creates a persona, or a draft that is rendered without being saved."""

    name: Name
    description: Description
    system_prompt: SystemPrompt
    personality_traits: dict[str, Any] = msgspec.field(default_factory=dict)
    capabilities: dict[str, Any] = msgspec.field(default_factory=dict)
    model_settings: ModelSettings = msgspec.field(default_factory=ModelSettings)
    tools: Annotated[list[Tool], Meta(max_length=64)] = msgspec.field(default_factory=list)
    visibility: Visibility = "private"
    extensions: Extensions = msgspec.field(default_factory=dict)
    limits: Limits = msgspec.field(default_factory=Limits)
    is_default: bool = False
    change_note: ChangeNote | None = None


class PersonaPatch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial update: fields left out keep their value."""

    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    system_prompt: SystemPrompt | UnsetType = UNSET
    personality_traits: dict[str, Any] | UnsetType = UNSET
    capabilities: dict[str, Any] | UnsetType = UNSET
    model_settings: ModelSettings | UnsetType = UNSET
    tools: Annotated[list[Tool], Meta(max_length=64)] | UnsetType = UNSET
    visibility: Visibility | UnsetType = UNSET
    extensions: Extensions | UnsetType = UNSET
    # null is no limits, like {}.
    limits: Limits | UnsetType | None = UNSET
    is_default: bool | UnsetType = UNSET
    change_note: ChangeNote | UnsetType | None = UNSET


# What a saved state of a persona consists of: what a version records, a restore brings back and a file sets.
CONTENT_FIELDS = (
    "name",
    "description",
    "system_prompt",
    "personality_traits",
    "capabilities",
    "model_settings",
    "tools",
    "visibility",
    "extensions",
    "limits",
)

WRITABLE_FIELDS = (*CONTENT_FIELDS, "is_default", "change_note")


class Caller(Struct, frozen=True, kw_only=True):
    """The authenticated user a request acts for."""

    user_id: UUID
    user_name: str
    display_name: str | None
    is_admin: bool
    key_id: UUID | None = None
    # The key's own limits (defaults for keys without their own are the limiter's), known from the key lookup.
    key_limits: Limits | None = None

    @property
    def shown_name(self) -> str:
        return self.display_name or self.user_name
