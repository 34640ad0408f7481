"""Wire types of the authoring API: versions, dry runs, previews, comparisons and test suites."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta, Struct

from api.chat_schemas import ModelName, ProviderName
from core.events import PersonaRef
from personas.lore import LoreDecision
from personas.models import PersonaDraft
from personas.store import VersionSummary
from runtime.authoring.service import CandidateResult, PersonaChoice, TestResult
from runtime.authoring.suites import PersonaTest
from runtime.chat.context import ContextAccount
from runtime.memory.recall import MemoryDecision

__all__ = [
    "CompareRequest",
    "CompareResponse",
    "DraftRenderRequest",
    "PreviewRequest",
    "RenderRequest",
    "RenderResponse",
    "RunTestsRequest",
    "RunTestsResponse",
    "TestResponse",
    "TestsResponse",
    "VersionsResponse",
]

# A persona's version is a PostgreSQL integer.
Version = Annotated[int, Meta(ge=1, le=2**31 - 1)]


class _Body(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are refused by name."""


class _Reply(Struct, frozen=True, kw_only=True):
    success: bool = True


class VersionsResponse(_Reply, frozen=True, kw_only=True):
    versions: list[VersionSummary]
    total: int


class RenderRequest(_Body, frozen=True, kw_only=True):
    message: str
    conversation_id: UUID | None = None
    version: Version | None = None


class DraftRenderRequest(_Body, frozen=True, kw_only=True):
    persona: PersonaDraft
    message: str


class RenderResponse(_Reply, frozen=True, kw_only=True):
    provider: str
    model: str
    system_prompt: str
    request: dict[str, Any]
    # The length of the system prompt before its first per-user or per-day value: what providers can cache.
    cacheable_prefix_chars: int
    warnings: list[str]
    # How the turn's context was chosen within the model's budget (contract section 13).
    context: ContextAccount
    # Each lorebook entry that was constant, keyed or carried over, and what became of it (section 14).
    lore: list[LoreDecision]
    # The caller's memories the turn would consider, whether each was used and why (section 15).
    memories: list[MemoryDecision]


class PreviewRequest(PersonaChoice, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A persona choice (saved or draft) plus the message; ``provider``/``model`` override the persona's."""

    message: str
    stream: bool = False
    provider: ProviderName | None = None
    model: ModelName | None = None


class CompareRequest(_Body, frozen=True, kw_only=True):
    message: str
    candidates: Annotated[list[PersonaChoice], Meta(min_length=2, max_length=4)]
    stream: bool = False


class CompareResponse(_Reply, frozen=True, kw_only=True):
    results: list[CandidateResult]


class TestResponse(_Reply, frozen=True, kw_only=True):
    test: PersonaTest
    message: str = "Test added"


class TestsResponse(_Reply, frozen=True, kw_only=True):
    tests: list[PersonaTest]
    total: int


class RunTestsRequest(_Body, frozen=True, kw_only=True):
    version: Version | None = None


class RunTestsResponse(_Reply, frozen=True, kw_only=True):
    persona: PersonaRef
    passed: int
    failed: int
    results: list[TestResult]
