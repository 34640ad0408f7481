"""The persona API: /api/v1/chat/personas."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody

from api.deps import CallerDep, Limit, Offset, PersonasDep
from api.schemas import (
    CurrentPersonaResponse,
    InitializeDefaultResponse,
    MessageResponse,
    PersonaListResponse,
    PersonaResponse,
    SetPersonaRequest,
    SetPersonaResponse,
)
from personas.models import PersonaDraft, PersonaPatch
from personas.service import present

__all__ = ["PersonaController"]


class PersonaController(Controller):
    path = "/api/v1/chat/personas"
    tags = ["personas"]

    @get("/")
    async def list_personas(
        self, caller: CallerDep, personas: PersonasDep, limit: Limit = 50, offset: Offset = 0
    ) -> PersonaListResponse:
        found, total = await personas.list(caller, limit=limit, offset=offset)
        return PersonaListResponse(personas=found, total=total)

    @get("/current")
    async def current(self, caller: CallerDep, personas: PersonasDep) -> CurrentPersonaResponse:
        persona, source = await personas.current(caller)
        return CurrentPersonaResponse(
            persona=present(persona, caller), source=source, message=f"Current persona is {persona.name}"
        )

    @post("/set", status_code=200)
    async def set_preference(
        self, data: JSONBody[SetPersonaRequest], caller: CallerDep, personas: PersonasDep
    ) -> SetPersonaResponse:
        persona = await personas.set_preference(caller, data.persona_id)
        return SetPersonaResponse(
            message=f"Persona set to {persona.name}", persona_id=persona.id, persona_name=persona.name
        )

    @post("/initialize-default", status_code=200)
    async def initialize_default(self, caller: CallerDep, personas: PersonasDep) -> InitializeDefaultResponse:
        persona, created = await personas.initialize_default()
        message = "Default persona restored" if created else "Default persona already exists"
        return InitializeDefaultResponse(message=message, persona=present(persona, caller), was_created=created)

    @post("/")
    async def create(self, data: JSONBody[PersonaDraft], caller: CallerDep, personas: PersonasDep) -> PersonaResponse:
        persona = await personas.create(caller, data)
        return PersonaResponse(persona=persona, message=f"Persona {persona.name} created")

    @get("/{persona_id:str}")
    async def get_persona(
        self, persona_id: FromPath[UUID], caller: CallerDep, personas: PersonasDep
    ) -> PersonaResponse:
        persona = await personas.get_visible(caller, persona_id)
        return PersonaResponse(persona=present(persona, caller), message="Persona retrieved successfully")

    @put("/{persona_id:str}")
    async def update(
        self, persona_id: FromPath[UUID], data: JSONBody[PersonaPatch], caller: CallerDep, personas: PersonasDep
    ) -> PersonaResponse:
        persona = await personas.update(caller, persona_id, data)
        return PersonaResponse(persona=persona, message=f"Persona {persona.name} updated to version {persona.version}")

    @delete("/{persona_id:str}", status_code=200)
    async def delete_persona(
        self, persona_id: FromPath[UUID], caller: CallerDep, personas: PersonasDep
    ) -> MessageResponse:
        persona = await personas.delete(caller, persona_id)
        return MessageResponse(message=f"Persona {persona.name} deleted")
