"""The OpenAI-compatible surface: personas as model ids, stateless completions with the persona injected."""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import NotFound
from personas.models import Caller, Persona
from providers import ChatMessage, ToolSpec
from runtime.answer import AnswerStream, open_answer
from runtime.chat import ChatService
from runtime.prompt import build_request, plan_routes, render_system_prompt
from runtime.resolve import PersonaSource, resolve_persona_name

__all__ = ["PERSONA_MODEL", "list_model_ids", "open_completion", "resolve_model"]

PERSONA_MODEL = "persona"
_PREFIX = "persona/"


async def list_model_ids(chat: ChatService, caller: Caller) -> list[str]:
    """``persona`` (whatever persona the caller would get) and ``persona/<name>`` for each usable persona."""
    ids = [PERSONA_MODEL]
    offset = 0
    while True:
        page, total = await chat.personas.list(caller, limit=200, offset=offset)
        ids.extend(_PREFIX + p.name for p in page)
        offset += len(page)
        if not page or offset >= total:
            return ids


async def resolve_model(chat: ChatService, caller: Caller, model: str) -> tuple[Persona, PersonaSource]:
    if model == PERSONA_MODEL:
        return await chat.personas.current(caller)
    if model.startswith(_PREFIX) and len(model) > len(_PREFIX):
        return await resolve_persona_name(chat.personas, caller, model[len(_PREFIX) :]), "request"
    raise NotFound(
        f"The model {model!r} does not exist here: use `persona` for your current persona or `persona/<name>` "
        "(GET /v1/models lists them).",
        field="model",
    )


async def open_completion(
    chat: ChatService,
    caller: Caller,
    persona: Persona,
    *,
    messages: Sequence[ChatMessage],
    client_system: Sequence[str] = (),
    tools: Sequence[ToolSpec] = (),
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
) -> AnswerStream:
    """Open the answer: the persona's system prompt first, the client's own system messages after it.

    Nothing is stored: an OpenAI client sends the whole conversation each time. The persona's prompt
    is injected on every call, including the one that carries tool results back.
    """
    system = "\n\n".join([render_system_prompt(persona, caller), *client_system]).strip()
    routes = plan_routes(persona, chat.providers, chat.default_provider)
    request = build_request(
        persona,
        system,
        messages,
        routes[0],
        extra_tools=tools,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
    )
    return await open_answer(chat.providers, routes, request)
