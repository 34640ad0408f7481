"""The chat API: POST /api/v1/chat (JSON or SSE) and the caller's conversations."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from msgspec import UNSET

from api.auth import KEY_IN_QUERY
from api.chat_schemas import (
    CancelResponse,
    ChatRequest,
    ChatResponse,
    ConversationOut,
    ConversationResponse,
    ConversationsResponse,
    MessageOut,
    TokenUsage,
)
from api.deps import CallerDep, Limit, Offset, ResourcesDep
from api.openapi import Streams, answers
from api.schemas import MessageResponse
from api.sse import ChatFrames, chat_body, record, sse_response
from core.errors import BadRequest, NotFound
from providers import ChatMessage
from runtime.chat.conversations import MessageState
from runtime.chat.pipeline import TurnInput
from runtime.chat.recordings import StatusOf
from runtime.chat.turn import Turn, TurnResult
from runtime.server.resources import Resources

__all__ = ["ChatController", "ConversationController", "MessageController", "chat_response", "wants_stream"]


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
        finish_reason=result.done.finish_reason,
        stored=UNSET if stored else False,
        tool_calls=result.done.tool_calls or UNSET,
    )


async def answer(turn: Turn, stream: bool, heartbeat: float, *, stored: bool = True) -> Response[Any]:
    """Stream the turn as SSE, or wait for all of it and answer JSON."""
    if stream:
        return sse_response(chat_body(turn.batches(), heartbeat))
    return Response(chat_response(await turn.collect(), stored=stored))


class ChatController(Controller):
    path = "/api/v1/chat"
    tags = ["chat"]

    @post("/", status_code=200, operation_class=Streams, responses=answers(ChatResponse, _ANSWER))
    async def chat(
        self, data: JSONBody[ChatRequest], caller: CallerDep, resources: ResourcesDep, request: Request[Any, Any, Any]
    ) -> Response[Any]:
        resources.chat.check_message(data.message)
        asked = TurnInput(
            messages=(ChatMessage(role="user", content=data.message),),
            persona_id=data.persona_id,
            conversation_id=data.conversation_id,
            provider=data.provider,
            model=data.model,
            store=True,
        )
        turn = await resources.chat.run(caller, asked)
        heartbeat = resources.settings.heartbeat_seconds
        if not wants_stream(data.stream, request):
            if not data.resumable:
                return Response(chat_response(await turn.collect()))
            # Collected in a task of its own, so the answer is finished and stored even if the client leaves.
            collecting = asyncio.ensure_future(turn.collect())
            resources.chat.spawn(_settle(collecting))
            return Response(chat_response(await asyncio.shield(collecting)))
        message_id = turn.start.message_id
        assert message_id is not None  # a kept turn
        streams = resources.streams
        if not streams.enabled:
            return sse_response(chat_body(turn.batches(), heartbeat, ChatFrames(message_id)))
        recording = streams.open(message_id, caller.user_id)
        frames = ChatFrames(message_id, streams, recording)
        if not data.resumable:
            return sse_response(chat_body(turn.batches(), heartbeat, frames))
        # The answer is read into its recording by a task of its own; this client is one reader of it, and
        # may leave and come back (GET /api/v1/chat/messages/{id}/events) while the answer goes on.
        resources.chat.spawn(record(turn.batches(), frames))
        state = _state_of(resources, caller.user_id, message_id)
        return sse_response(recording.follow(0, heartbeat, state))


async def _settle(task: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        await task


def _state_of(resources: Resources, user_id: UUID, message_id: UUID) -> StatusOf:
    async def state() -> MessageState | None:
        return await resources.conversations.message_state(user_id, message_id)

    return state


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
        state = _state_of(resources, caller.user_id, message_id)
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
        return ConversationsResponse(
            conversations=[msgspec.convert(c, ConversationOut, from_attributes=True) for c in found], total=total
        )

    @get("/{conversation_id:str}")
    async def get_conversation(
        self, conversation_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep
    ) -> ConversationResponse:
        conversation = await resources.conversations.get(caller.user_id, conversation_id)
        messages = await resources.conversations.messages(conversation.id)
        return ConversationResponse(
            conversation=msgspec.convert(conversation, ConversationOut, from_attributes=True),
            messages=[msgspec.convert(m, MessageOut, from_attributes=True) for m in messages],
        )

    @delete("/{conversation_id:str}", status_code=200)
    async def delete_conversation(
        self, conversation_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep
    ) -> MessageResponse:
        await resources.conversations.delete(caller.user_id, conversation_id)
        return MessageResponse(message="Conversation deleted")
