"""Memories over HTTP (contract section 15): only the user a memory belongs to reads or changes it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from litestar import Controller, delete, get, patch, post, put
from litestar.params import FromPath, JSONBody, Parameter
from msgspec import Meta, Struct

from api.deps import CallerDep, Limit, Offset, ResourcesDep
from core.errors import BadRequest, NotFound
from runtime.memory import Memory

__all__ = ["MemoryController"]

Content = Annotated[str, Meta(min_length=1, max_length=1000, description="1 to 1,000 characters")]


class MemoryOut(Struct, frozen=True, kw_only=True):
    id: UUID
    persona_id: UUID | None
    content: str
    source: Literal["user", "extracted"]
    source_message_id: UUID | None
    created_at: datetime
    updated_at: datetime


class MemoryListResponse(Struct, frozen=True, kw_only=True):
    success: bool = True
    memories: list[MemoryOut]
    total: int


class MemoryResponse(Struct, frozen=True, kw_only=True):
    success: bool = True
    memory: MemoryOut


class DeletedResponse(Struct, frozen=True, kw_only=True):
    success: bool = True
    deleted: int


class MemorySwitch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool


class MemorySwitchResponse(Struct, frozen=True, kw_only=True):
    success: bool = True
    enabled: bool


class CreateMemoryRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    content: Content
    persona_id: UUID | None = None


class RewriteMemoryRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    content: Content


def _out(memory: Memory) -> MemoryOut:
    return MemoryOut(
        id=memory.id,
        persona_id=memory.persona_id,
        content=memory.content,
        source=memory.source,
        source_message_id=memory.source_message_id,
        created_at=memory.created_at,
        updated_at=memory.updated_at,
    )


def _content(text: str) -> str:
    text = text.strip()
    if not text:
        raise BadRequest("A memory's content is 1 to 1,000 characters, not only blanks.", field="content")
    return text


def _not_found(memory_id: UUID) -> NotFound:
    return NotFound(f"Memory {memory_id} not found.", field="memory_id")


PersonaQuery = Annotated[UUID | None, Parameter(description="Only the memories for this persona")]


class MemoryController(Controller):
    path = "/api/v1/memories"
    tags = ["memories"]

    @get("/")
    async def list_memories(
        self,
        caller: CallerDep,
        resources: ResourcesDep,
        persona_id: PersonaQuery = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> MemoryListResponse:
        """The caller's own memories, newest first."""
        memories, total = await resources.memories.page(
            caller.user_id, persona_id=persona_id, limit=limit, offset=offset
        )
        return MemoryListResponse(memories=[_out(m) for m in memories], total=total)

    @post("/", status_code=201)
    async def create_memory(
        self, data: JSONBody[CreateMemoryRequest], caller: CallerDep, resources: ResourcesDep
    ) -> MemoryResponse:
        """A memory the caller tells: for one persona they can see, or (no `persona_id`) for all of them."""
        content = _content(data.content)
        if data.persona_id is not None:
            try:
                await resources.personas.get_visible(caller, data.persona_id)
            except NotFound:
                raise NotFound(f"Persona {data.persona_id} not found.", field="persona_id") from None
        memory = await resources.memories.add(caller.user_id, content, persona_id=data.persona_id)
        return MemoryResponse(memory=_out(memory))

    @get("/settings")
    async def get_settings(self, caller: CallerDep, resources: ResourcesDep) -> MemorySwitchResponse:
        """The caller's own memory switch (on unless they turned it off)."""
        return MemorySwitchResponse(enabled=await resources.memories.enabled(caller.user_id))

    @put("/settings")
    async def put_settings(
        self, data: JSONBody[MemorySwitch], caller: CallerDep, resources: ResourcesDep
    ) -> MemorySwitchResponse:
        """Turn the caller's memories on or off for every persona; off, no turn reads or extracts any."""
        return MemorySwitchResponse(enabled=await resources.memories.set_enabled(caller.user_id, data.enabled))

    @patch("/{memory_id:str}")
    async def rewrite_memory(
        self,
        memory_id: FromPath[UUID],
        data: JSONBody[RewriteMemoryRequest],
        caller: CallerDep,
        resources: ResourcesDep,
    ) -> MemoryResponse:
        memory = await resources.memories.rewrite(caller.user_id, memory_id, _content(data.content))
        if memory is None:
            raise _not_found(memory_id)
        return MemoryResponse(memory=_out(memory))

    @delete("/{memory_id:str}", status_code=200)
    async def delete_memory(
        self, memory_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep
    ) -> DeletedResponse:
        if not await resources.memories.delete(caller.user_id, memory_id):
            raise _not_found(memory_id)
        return DeletedResponse(deleted=1)

    @delete("/", status_code=200)
    async def delete_memories(
        self, caller: CallerDep, resources: ResourcesDep, persona_id: PersonaQuery = None
    ) -> DeletedResponse:
        """Forget the caller's memories for one persona, or (no `persona_id`) all of them."""
        return DeletedResponse(deleted=await resources.memories.delete_all(caller.user_id, persona_id=persona_id))
