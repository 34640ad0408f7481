"""The chat API: POST /api/v1/chat (JSON or SSE) and the caller's conversations."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from msgspec import UNSET

from api.chat_schemas import (
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
from api.sse import chat_body, sse_response
from providers import ChatMessage
from runtime.pipeline import TurnInput
from runtime.turn import Turn, TurnResult

__all__ = ["ChatController", "ConversationController", "chat_response", "wants_stream"]


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
        return await answer(turn, wants_stream(data.stream, request), resources.settings.heartbeat_seconds)


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
