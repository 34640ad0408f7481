"""The authoring API under /api/v1/chat/personas: versions, render, preview, compare and test suites."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody

from api.authoring_schemas import (
    CompareRequest,
    CompareResponse,
    DraftRenderRequest,
    PreviewRequest,
    RenderRequest,
    RenderResponse,
    RunTestsRequest,
    RunTestsResponse,
    TestResponse,
    TestsResponse,
    VersionsResponse,
)
from api.chat import encoded, wants_stream
from api.chat_schemas import ChatResponse
from api.deps import AuthoringDep, CallerDep, Limit, Offset, ResourcesDep, VersionNumber
from api.openapi import OptionalBody, Streams, answers
from api.schemas import MessageResponse, PersonaResponse
from api.sse import sse_response
from runtime.authoring.service import Rendered
from runtime.authoring.suites import PersonaTestDraft
from runtime.chat.frames import candidate_body

__all__ = ["AuthoringController"]

AnyRequest = Request[Any, Any, Any]


def _rendered(rendered: Rendered) -> RenderResponse:
    return RenderResponse(
        provider=rendered.provider,
        model=rendered.model,
        system_prompt=rendered.system_prompt,
        request=rendered.request,
        cacheable_prefix_chars=rendered.cacheable_prefix_chars,
        warnings=rendered.warnings,
        context=rendered.context,
        lore=rendered.lore,
        memories=rendered.memories,
    )


class AuthoringController(Controller):
    path = "/api/v1/chat/personas"
    tags = ["authoring"]

    # Versions ---------------------------------------------------------------------------------------

    @get("/{persona_id:str}/versions")
    async def list_versions(
        self,
        persona_id: FromPath[UUID],
        caller: CallerDep,
        authoring: AuthoringDep,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> VersionsResponse:
        """Every saved state of the persona, newest first."""
        versions, total = await authoring.history.list(caller, persona_id, limit=limit, offset=offset)
        return VersionsResponse(versions=versions, total=total)

    @get("/{persona_id:str}/versions/{version:str}")
    async def get_version(
        self, persona_id: FromPath[UUID], version: FromPath[VersionNumber], caller: CallerDep, authoring: AuthoringDep
    ) -> PersonaResponse:
        """The persona as it was at ``version``."""
        persona = await authoring.history.get(caller, persona_id, version)
        return PersonaResponse(persona=persona, message=f"Persona {persona.name} as of version {version}")

    @post("/{persona_id:str}/versions/{version:str}/restore", status_code=200)
    async def restore_version(
        self, persona_id: FromPath[UUID], version: FromPath[VersionNumber], caller: CallerDep, authoring: AuthoringDep
    ) -> PersonaResponse:
        """Save the content of ``version`` as a new version."""
        persona = await authoring.history.restore(caller, persona_id, version)
        return PersonaResponse(
            persona=persona, message=f"Persona {persona.name} restored from version {version} as {persona.version}"
        )

    # Dry runs, previews, comparisons ----------------------------------------------------------------

    @post("/{persona_id:str}/render", status_code=200)
    async def render(
        self, persona_id: FromPath[UUID], data: JSONBody[RenderRequest], caller: CallerDep, authoring: AuthoringDep
    ) -> RenderResponse:
        """What a chat with this persona would send upstream; no provider is called."""
        persona = await authoring.history.get(caller, persona_id, data.version)
        rendered = await authoring.render(caller, persona, message=data.message, conversation_id=data.conversation_id)
        return _rendered(rendered)

    @post("/render", status_code=200)
    async def render_draft(
        self, data: JSONBody[DraftRenderRequest], caller: CallerDep, authoring: AuthoringDep
    ) -> RenderResponse:
        """What a chat with an unsaved draft would send upstream; no provider is called."""
        persona = authoring.draft(caller, data.persona)
        return _rendered(await authoring.render(caller, persona, message=data.message))

    @post(
        "/preview",
        status_code=200,
        operation_class=Streams,
        responses=answers(ChatResponse, "The answer, as from /api/v1/chat"),
    )
    async def preview(
        self,
        data: JSONBody[PreviewRequest],
        caller: CallerDep,
        authoring: AuthoringDep,
        resources: ResourcesDep,
        request: AnyRequest,
    ) -> Response[Any]:
        """A real answer from a draft or a saved version, answered like /api/v1/chat; nothing is stored."""
        persona = await authoring.choose(caller, data)
        turn = await authoring.preview(caller, persona, message=data.message, provider=data.provider, model=data.model)
        stream, heartbeat = wants_stream(data.stream, request), resources.settings.heartbeat_seconds
        return encoded(await resources.chat.answer(turn, stream=stream, heartbeat=heartbeat), turn.start, stored=False)

    @post(
        "/compare",
        status_code=200,
        operation_class=Streams,
        responses=answers(CompareResponse, "Each candidate's answer, or SSE with `candidate` in each event"),
    )
    async def compare(
        self,
        data: JSONBody[CompareRequest],
        caller: CallerDep,
        authoring: AuthoringDep,
        resources: ResourcesDep,
        request: AnyRequest,
    ) -> Response[Any]:
        """Two to four candidates answer the same message at once; nothing is stored."""
        personas = await authoring.candidates(caller, data.candidates)
        batch = await authoring.comparison(caller, data.message, personas)
        if wants_stream(data.stream, request):
            events = authoring.compare_events(batch)
            return sse_response(candidate_body(events, resources.settings.heartbeat_seconds))
        return Response(CompareResponse(results=await authoring.compare_batch(batch, personas)))

    # Test suites ------------------------------------------------------------------------------------

    @post("/{persona_id:str}/tests")
    async def add_test(
        self, persona_id: FromPath[UUID], data: JSONBody[PersonaTestDraft], caller: CallerDep, authoring: AuthoringDep
    ) -> TestResponse:
        return TestResponse(test=await authoring.add_test(caller, persona_id, data))

    @get("/{persona_id:str}/tests")
    async def list_tests(self, persona_id: FromPath[UUID], caller: CallerDep, authoring: AuthoringDep) -> TestsResponse:
        tests = await authoring.list_tests(caller, persona_id)
        return TestsResponse(tests=tests, total=len(tests))

    @delete("/{persona_id:str}/tests/{test_id:str}", status_code=200)
    async def delete_test(
        self, persona_id: FromPath[UUID], test_id: FromPath[UUID], caller: CallerDep, authoring: AuthoringDep
    ) -> MessageResponse:
        await authoring.delete_test(caller, persona_id, test_id)
        return MessageResponse(message="Test deleted")

    @post("/{persona_id:str}/tests/run", status_code=200, operation_class=OptionalBody)
    async def run_tests(
        self,
        persona_id: FromPath[UUID],
        caller: CallerDep,
        authoring: AuthoringDep,
        data: JSONBody[RunTestsRequest | None] = None,
    ) -> RunTestsResponse:
        """Run every test against the current version (or ``version``); nothing is stored."""
        run = await authoring.run_tests(caller, persona_id, data.version if data else None)
        return RunTestsResponse(persona=run.persona, passed=run.passed, failed=run.failed, results=run.results)
