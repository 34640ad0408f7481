"""A conversation the persona opens: POST /api/v1/chat/conversations, its first message one of its greetings.

Without ``greeting`` the persona's first greeting opens it (an empty conversation when it has none); an index
picks another. The greeting's variables are filled as the system prompt's are, and it is stored as the
persona's message, counted in the tokenizer of the model that would answer, so the first turn sends it as
the first assistant message of the history.
"""

from __future__ import annotations

from uuid import UUID

from core.errors import BadRequest
from personas.models import Caller
from runtime.chat.conversations import Conversation
from runtime.chat.pipeline import ChatPipeline
from runtime.chat.prompt import plan_routes, render_greeting
from runtime.chat.resolve import resolve_persona, serve_version
from runtime.chat.tokens import ESTIMATE, MESSAGE_OVERHEAD, tokenizer_for

__all__ = ["start_conversation"]


async def start_conversation(
    chat: ChatPipeline, caller: Caller, *, persona_id: UUID | None, greeting: int | None
) -> Conversation:
    """The caller's new conversation with the persona chat would resolve (``persona_id``, else their preferred
    one, else the default), opened by its greeting ``greeting`` (None: the first, if any)."""
    persona, source = await resolve_persona(chat.personas, caller, requested=persona_id, conversation=None)
    persona, variant = await serve_version(chat.personas, caller, persona, None, field="persona_id")
    greetings = persona.greetings
    if greeting is not None and not greetings:
        raise BadRequest(
            f"Persona {persona.name!r} has no greetings, so `greeting` cannot pick one: leave `greeting` out "
            "for an empty conversation, or give the persona `greetings`.",
            field="greeting",
        )
    if greeting is not None and greeting >= len(greetings):
        raise BadRequest(
            f"`greeting` is {greeting}, but persona {persona.name!r} has {len(greetings)} greeting"
            f"{'s' if len(greetings) != 1 else ''}: pick 0 to {len(greetings) - 1}.",
            field="greeting",
            details={"greetings": len(greetings)},
        )
    text = render_greeting(greetings[greeting or 0], persona, caller) if greetings else None
    tokens = None
    if text is not None:
        try:
            model = plan_routes(persona, chat.providers, chat.default_provider)[0].model
            tokenizer = tokenizer_for(model)
        except BadRequest:  # the persona names a provider this server lacks: its turns will say so
            tokenizer = ESTIMATE
        tokens = tokenizer.count(text) + MESSAGE_OVERHEAD
    return await chat.conversations.start(
        user_id=caller.user_id,
        title=persona.name,
        persona_id=persona.id,
        persona_version=persona.version,
        persona_source=source,
        greeting=text,
        tokens=tokens,
        variant=variant,
    )
