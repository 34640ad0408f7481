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
    "ExampleMessage",
    "Fallback",
    "Limits",
    "LoreEntry",
    "Lorebook",
    "MemorySettings",
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


class MemorySettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether a persona remembers its users across conversations (section 15), and how much."""

    enabled: bool = False
    # Ask a model after each completed turn which lasting facts about the user it adds, changes or contradicts.
    extract: bool = False
    token_budget: Annotated[int, Meta(ge=1, le=100_000)] = 512
    max_items: Annotated[int, Meta(ge=1, le=10_000)] = 100


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
    # The model takes images in messages; false refuses a turn with an image (a 400) before any provider call.
    vision: bool = True
    memory: MemorySettings = msgspec.field(default_factory=MemorySettings)


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


LoreKey = Annotated[str, Meta(min_length=1, max_length=1000)]
LoreCount = Annotated[int, Meta(ge=0, le=10_000)]
LoreText = Annotated[str, Meta(max_length=20_000)]
ShortText = Annotated[str, Meta(max_length=1000)]


class LoreEntry(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of a lorebook (section 14): text that joins the context when its keys occur in the chat."""

    # Unique in its book; the service gives one to every entry written without.
    id: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    name: ShortText | None = None
    comment: LoreText | None = None
    keys: Annotated[list[LoreKey], Meta(max_length=100)] = msgspec.field(default_factory=list)
    secondary_keys: Annotated[list[LoreKey], Meta(max_length=100)] = msgspec.field(default_factory=list)
    selective_logic: Literal["and_any", "and_all", "not_any", "not_all"] = "and_any"
    content: LoreText = ""
    enabled: bool = True
    constant: bool = False
    case_sensitive: bool = False
    whole_words: bool = True
    use_regex: bool = False
    insertion_order: Annotated[int, Meta(ge=-1_000_000, le=1_000_000)] = 100
    position: Literal["system", "at_depth"] = "system"
    depth: Annotated[int, Meta(ge=0, le=1000)] = 4
    role: Literal["system", "user", "assistant"] = "system"
    probability: Annotated[int, Meta(ge=0, le=100)] = 100
    group: ShortText | None = None
    sticky: LoreCount = 0
    cooldown: LoreCount = 0
    delay: LoreCount = 0
    extensions: Extensions = msgspec.field(default_factory=dict)


class Lorebook(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A persona's world info: entries, how far back the chat is scanned for keys, and the tokens lore may use."""

    scan_depth: Annotated[int, Meta(ge=0, le=1000)] = 2
    token_budget: Annotated[int, Meta(ge=0, le=1_000_000)] = 1024
    recursive: bool = False
    entries: Annotated[list[LoreEntry], Meta(max_length=2000)] = msgspec.field(default_factory=list)


class ExampleMessage(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A sample exchange that shows the model how the persona speaks (a card's ``mes_example``)."""

    role: Literal["user", "assistant", "system"]
    content: Annotated[str, Meta(min_length=1, max_length=20_000)]


Greetings = Annotated[list[Annotated[str, Meta(min_length=1, max_length=20_000)]], Meta(max_length=100)]
ExampleMessages = Annotated[list[ExampleMessage], Meta(max_length=200)]
Scenario = Annotated[str, Meta(max_length=20_000)]


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
    lorebook: Lorebook | None = None
    greetings: list[str] = msgspec.field(default_factory=list)
    example_messages: list[ExampleMessage] = msgspec.field(default_factory=list)
    scenario: str | None = None
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
    lorebook: Lorebook | None = None
    greetings: Greetings = msgspec.field(default_factory=list)
    example_messages: ExampleMessages = msgspec.field(default_factory=list)
    scenario: Scenario | None = None
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
    lorebook: Lorebook | UnsetType | None = UNSET
    greetings: Greetings | UnsetType = UNSET
    example_messages: ExampleMessages | UnsetType = UNSET
    scenario: Scenario | UnsetType | None = UNSET
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
    "lorebook",
    "greetings",
    "example_messages",
    "scenario",
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
