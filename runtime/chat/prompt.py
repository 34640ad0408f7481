"""Prompt assembly: the persona's rendered system prompt, tools and model settings as a provider request."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from core.errors import BadRequest
from personas.models import Caller, Persona
from personas.template import PER_TURN_VARIABLES, placeholders, render_template
from providers import NO_OPTIONS, ChatMessage, Options, ProviderRequest, ProviderSet, ToolSpec

__all__ = [
    "SCENARIO_HEADING",
    "Route",
    "SystemPrompts",
    "build_request",
    "cache_report",
    "plan_routes",
    "render_greeting",
    "render_system_prompt",
    "tool_specs",
]

log = logging.getLogger("persona_runtime.prompt")

# How the persona's scenario (section 14) is introduced, after its system prompt.
SCENARIO_HEADING = "Scenario:"


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """One provider and model to try, in order: the persona's own first, then its fallbacks."""

    provider: str
    model: str


def render_system_prompt(persona: Persona, caller: Caller, *, now: datetime | None = None) -> str:
    """The persona's system prompt with its variables filled; traits and capabilities always included, and
    the scenario, when it has one, as a section after them."""
    day = (now or datetime.now(UTC)).astimezone(UTC).date().isoformat()
    return _persona_text(persona, user_name=caller.shown_name, date=day)


def _persona_text(persona: Persona, *, user_name: str, date: str) -> str:
    def fill(template: str, *, sections: bool = True) -> str:
        return render_template(
            template,
            user_name=user_name,
            persona_name=persona.name,
            date=date,
            traits=persona.personality_traits,
            capabilities=persona.capabilities,
            sections=sections,
        )

    text = fill(persona.system_prompt or "")
    scenario = (persona.scenario or "").strip()
    if scenario:
        # Part of the persona's own text, so within the prefix providers cache.
        section = f"{SCENARIO_HEADING}\n{fill(scenario, sections=False)}"
        text = f"{text.rstrip()}\n\n{section}" if text.strip() else section
    return text


def render_greeting(text: str, persona: Persona, caller: Caller, *, now: datetime | None = None) -> str:
    """A greeting of the persona with the system prompt's variables filled the same way, and nothing appended."""
    day = (now or datetime.now(UTC)).astimezone(UTC).date().isoformat()
    return render_template(
        text,
        user_name=caller.shown_name,
        persona_name=persona.name,
        date=day,
        traits=persona.personality_traits,
        capabilities=persona.capabilities,
        sections=False,
    )


class SystemPrompts:
    """Rendered system prompts, remembered per persona version, user and day.

    A saved version never changes, so its rendering for one user on one day is the same every turn;
    drafts (version 0) are rendered afresh. At most ``size`` renderings are kept.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._rendered: dict[tuple[UUID, int, str, str], str] = {}

    def render(self, persona: Persona, caller: Caller) -> str:
        if persona.version == 0:
            return render_system_prompt(persona, caller)
        now = datetime.now(UTC)
        key = (persona.id, persona.version, caller.shown_name, now.date().isoformat())
        text = self._rendered.get(key)
        if text is None:
            if len(self._rendered) >= self._size:
                self._rendered.clear()
            text = self._rendered[key] = render_system_prompt(persona, caller, now=now)
        return text


def cache_report(persona: Persona, rendered: str) -> tuple[int, list[str]]:
    """The length of ``rendered``'s stable prefix (before any per-user or per-day value), and warnings
    when such a value stands early enough to keep most of the prompt out of providers' prompt caches."""
    settings = persona.model_settings
    marker = "\x00"
    probe = _persona_text(persona, user_name=marker, date=marker)
    prefix = probe.find(marker)
    variable = None
    if prefix < 0:
        prefix = len(probe)
    else:
        written = [*placeholders(persona.system_prompt or ""), *placeholders(persona.scenario or "")]
        variable = next((p.name for p in written if p.name in PER_TURN_VARIABLES), None)
    warnings: list[str] = []
    after = len(rendered) - prefix
    if variable is not None and after > prefix:
        warnings.append(
            f"`{{{{{variable}}}}}` at character {prefix} keeps the {after} characters after it out of providers' "
            "prompt caches, which reuse only what comes before the first per-user or per-day value. Move "
            f"`{{{{{variable}}}}}` (and any other `{{{{user_name}}}}` or `{{{{date}}}}`) to the end of the prompt."
        )
    if not settings.prompt_cache:
        warnings.append("`model_settings.prompt_cache` is off: Anthropic is not asked to cache this prompt.")
    return min(prefix, len(rendered)), warnings


def tool_specs(persona: Persona) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(name=t.name, description=t.description, parameters=t.parameters) for t in persona.tools)


def plan_routes(
    persona: Persona,
    providers: ProviderSet,
    default_provider: str,
    *,
    provider: str | None = None,
    model: str | None = None,
) -> list[Route]:
    """Which provider and model answer: the request's choice, else the persona's, else the default.

    Fallbacks come from the persona and are used only when the caller did not pick a provider.
    A fallback naming a provider this server does not have is skipped (and logged).
    """
    settings = persona.model_settings
    if provider is not None:
        chosen = providers.get(provider)
    elif settings.provider is not None:
        if settings.provider not in providers:
            raise BadRequest(
                f"Persona {persona.name!r} asks for provider {settings.provider!r}, which this server does not "
                f"have. Configured providers: {', '.join(providers.names())}. Pass `provider` to choose one, or "
                "change the persona's `model_settings.provider`.",
                field="provider",
            )
        chosen = providers.get(settings.provider)
    else:
        chosen = providers.get(default_provider)
    persona_model = settings.model if settings.provider in (None, chosen.name) else None
    routes = [Route(provider=chosen.name, model=model or persona_model or chosen.default_model)]
    if provider is None:
        for fallback in settings.fallbacks:
            if fallback.provider not in providers:
                log.warning(
                    "persona %s: fallback provider %r is not configured; skipped", persona.id, fallback.provider
                )
                continue
            target = providers.get(fallback.provider)
            routes.append(Route(provider=target.name, model=fallback.model or target.default_model))
    return routes


def build_request(
    persona: Persona,
    system_prompt: str,
    messages: Sequence[ChatMessage],
    route: Route,
    *,
    extra_tools: Sequence[ToolSpec] = (),
    persona_chars: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    options: Options = NO_OPTIONS,
) -> ProviderRequest:
    """The provider-neutral request: sampling parameters from the call, else from the persona; the client's
    other parameters (``options``) as they came.

    ``persona_chars`` is how much of ``system_prompt`` is the persona's own (all of it when ``None``): with
    the persona's tools, the prefix providers are asked to cache unless its ``prompt_cache`` is off.
    """
    if persona_chars is None:
        persona_chars = len(system_prompt)
    settings = persona.model_settings
    tools = tool_specs(persona)
    if extra_tools:
        own = {t.name for t in extra_tools}
        tools = tuple(t for t in tools if t.name not in own)
    persona_tools = len(tools)
    tools += tuple(extra_tools)
    cache = settings.prompt_cache and bool(system_prompt)
    return ProviderRequest(
        model=route.model,
        system=system_prompt or None,
        messages=tuple(messages),
        tools=tools,
        temperature=temperature if temperature is not None else settings.temperature,
        top_p=top_p if top_p is not None else settings.top_p,
        max_tokens=max_tokens if max_tokens is not None else settings.max_tokens,
        cached_system_chars=min(persona_chars, len(system_prompt)) if cache and persona_chars else 0,
        cached_tools=persona_tools if settings.prompt_cache else 0,
        options=options,
    )
