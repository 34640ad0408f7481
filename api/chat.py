"""The chat API: POST /api/v1/chat (JSON or SSE) and the caller's conversations."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from msgspec import UNSET, UnsetType

from api.auth import KEY_IN_QUERY
from api.body import GuardedRequest
from api.chat_schemas import (
    CancelResponse,
    ChatRequest,
    ChatResponse,
    ConversationOut,
    ConversationResponse,
    ConversationsResponse,
    MessageOut,
    StartConversationRequest,
    SummaryOut,
    TokenUsage,
)
from api.deps import CallerDep, Limit, Offset, ResourcesDep
from api.openapi import OptionalBody, Streams, answers
from api.schemas import MessageResponse
from api.sse import sse_response
from api.trace import turn_headers
from core.errors import BadRequest, NotFound
from core.events import Start
from providers import ChatMessage
from runtime.chat.collector import TurnResult
from runtime.chat.conversations import Conversation
from runtime.chat.openings import start_conversation
from runtime.chat.pipeline import Answer, TurnInput
from runtime.server.resources import Resources

__all__ = [
    "ChatController",
    "ConversationController",
    "MessageController",
    "chat_response",
    "encoded",
    "wants_stream",
]


_ANSWER = 'The answer as JSON, or as Server-Sent Events with `"stream": true` or `Accept: text/event-stream`'


def wants_stream(stream: bool, request: Request[Any, Any, Any]) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


def chat_response(result: TurnResult, *, stored: bool = True) -> ChatResponse:
    start, usage = result.start, result.usage
    return ChatResponse(
        success=True,
        response=result.text,
        conversation_id=start.conversation_id,
        message_id=start.message_id,
        persona=start.persona,
        persona_source=start.persona_source,
        provider=start.provider,
        model=start.model,
        usage=TokenUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
        )
        if usage
        else None,
        finish_reason=result.finish_reason,
        stored=UNSET if stored else False,
        tool_calls=result.done.tool_calls if result.done is not None and result.done.tool_calls else UNSET,
    )


def encoded(answer: Answer, start: Start, *, stored: bool = True) -> Response[Any]:
    """A turn's answer on the wire: JSON when whole, else our SSE; its turn's id in ``x-persona-turn-id``."""
    headers = turn_headers(start)
    if isinstance(answer, TurnResult):
        return Response(chat_response(answer, stored=stored), headers=headers)
    return sse_response(answer, headers)


class ChatController(Controller):
    path = "/api/v1/chat"
    tags = ["chat"]

    @post("/", status_code=200, operation_class=Streams, responses=answers(ChatResponse, _ANSWER))
    async def chat(self, data: JSONBody[ChatRequest], request: GuardedRequest) -> Response[Any]:
        resources = request.resources
        stream = wants_stream(data.stream, request)
        asked = TurnInput(
            messages=(ChatMessage(role="user", content=data.message),),
            message_fields=("message",),
            persona_id=data.persona_id,
            conversation_id=data.conversation_id,
            provider=data.provider,
            model=data.model,
            store=True,
            stream=stream,
            memory=data.memory,
            persona_version=data.persona_version,
        )
        turn = await resources.chat.run(request.caller, asked)
        heartbeat = resources.settings.heartbeat_seconds
        answer = await resources.chat.answer(turn, stream=stream, resumable=data.resumable, heartbeat=heartbeat)
        return encoded(answer, turn.start)


def _after(message_id: UUID, last_event_id: str | None, after: str | None) -> int:
    """How many events the client has: from ``Last-Event-ID`` (or ``?after=``), ``<message_id>:<n>`` or ``n``."""
    value, field = (after, "after") if after is not None else (last_event_id, "Last-Event-ID")
    if value is None or not value.strip():
        return 0
    text = value.strip()
    head, sep, tail = text.rpartition(":")
    if sep and head != str(message_id):
        raise BadRequest(
            f"`{field}` {text!r} names another message's event: send an id of this stream, `{message_id}:<n>`.",
            field=field,
        )
    number = tail if sep else text
    if not number.isdigit() or len(number) > 9:
        raise BadRequest(f"`{field}` {text!r} is not an event id: send `{message_id}:<n>` as received.", field=field)
    return int(number)


class MessageController(Controller):
    path = "/api/v1/chat/messages"
    tags = ["chat"]

    @get(
        "/{message_id:str}/events",
        opt={KEY_IN_QUERY: True},
        operation_class=Streams,
        responses=answers(None, "The answer's events after `Last-Event-ID` (or `?after=`), then live to its end"),
    )
    async def events(
        self,
        message_id: FromPath[UUID],
        caller: CallerDep,
        resources: ResourcesDep,
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", max_length=200)] = None,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[Any]:
        seen = _after(message_id, last_event_id, after)
        state = resources.chat.status_of(caller.user_id, message_id)
        if await state() is None:
            raise _unknown_message(message_id)
        heartbeat = resources.settings.heartbeat_seconds
        return sse_response(await resources.streams.replay(message_id, seen, heartbeat, state))

    @post("/{message_id:str}/cancel", status_code=200)
    async def cancel(self, message_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep) -> CancelResponse:
        status = await resources.cancel_answer(caller.user_id, message_id)
        if status is None:
            raise _unknown_message(message_id)
        return CancelResponse(message="The answer was stopped; what was said is stored.", status=status)


def _unknown_message(message_id: UUID) -> NotFound:
    return NotFound(f"Message {message_id} not found: check the message id.", field="message_id")


def _conversation_out(conversation: Conversation, summary: SummaryOut | UnsetType | None = UNSET) -> ConversationOut:
    """A conversation as the API shows it: with its summary on its own GET, without one in the list."""
    return ConversationOut(
        id=conversation.id,
        title=conversation.title,
        persona_id=conversation.persona_id,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
        summary=summary,
    )


async def _conversation_response(resources: Resources, conversation: Conversation) -> ConversationResponse:
    """A conversation and its messages, as GET /api/v1/chat/conversations/{id} shows them."""
    messages = await resources.conversations.messages(conversation.id)
    summary = None
    if conversation.summary:
        summary = SummaryOut(
            content=conversation.summary,
            covers_until_message_id=conversation.summary_covers_message_id,
            updated_at=conversation.summary_updated_at,
        )
    return ConversationResponse(
        conversation=_conversation_out(conversation, summary),
        messages=[msgspec.convert(m, MessageOut, from_attributes=True) for m in messages],
    )


class ConversationController(Controller):
    path = "/api/v1/chat/conversations"
    tags = ["chat"]

    @get("/")
    async def list_conversations(
        self,
        caller: CallerDep,
        resources: ResourcesDep,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> ConversationsResponse:
        found, total = await resources.conversations.list_for_user(caller.user_id, limit=limit, offset=offset)
        return ConversationsResponse(conversations=[_conversation_out(c) for c in found], total=total)

    @get("/{conversation_id:str}")
    async def get_conversation(
        self, conversation_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep
    ) -> ConversationResponse:
        conversation = await resources.conversations.get(caller.user_id, conversation_id)
        return await _conversation_response(resources, conversation)

    @post("/", operation_class=OptionalBody)
    async def start_conversation(
        self, caller: CallerDep, resources: ResourcesDep, data: JSONBody[StartConversationRequest | None] = None
    ) -> ConversationResponse:
        """A new conversation the persona opens with its greeting (`greeting`: which; left out: the first)."""
        asked = data or StartConversationRequest()
        conversation = await start_conversation(
            resources.chat, caller, persona_id=asked.persona_id, greeting=asked.greeting
        )
        return await _conversation_response(resources, conversation)

    @delete("/{conversation_id:str}", status_code=200)
    async def delete_conversation(
        self, conversation_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep
    ) -> MessageResponse:
        await resources.conversations.delete(caller.user_id, conversation_id)
        return MessageResponse(message="Conversation deleted")
