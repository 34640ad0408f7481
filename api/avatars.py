"""Persona avatars: /api/v1/chat/personas/{id}/avatar (PUT the image's bytes, GET them, DELETE them)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, put
from litestar.openapi import ResponseSpec
from litestar.params import FromPath

from api.deps import AvatarsDep, CallerDep
from api.openapi import ImageAnswer, ImageBody, answers
from api.schemas import AvatarOut, AvatarResponse, MessageResponse
from personas.avatars import MAX_AVATAR_BYTES, Avatar

__all__ = ["AvatarController"]

# The avatar depends on who asks (a private persona's is its owner's), so only the client keeps it, and
# checks it again each time: an ETag answer (304) costs no bytes.
_CACHE_CONTROL = "private, no-cache"


async def _read_image(request: Request[Any, Any, Any]) -> bytes:
    """The body, read no further than one byte past the most an avatar may be (that byte makes it a 413)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_AVATAR_BYTES:
            break
    return bytes(body)


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weakly compared, as RFC 9110 asks for this header) or is ``*``."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _out(avatar: Avatar) -> AvatarOut:
    return AvatarOut(
        content_type=avatar.content_type,  # type: ignore[arg-type]  # the table's CHECK holds it to the three
        size=len(avatar.image),
        sha256=avatar.sha256,
        updated_at=avatar.updated_at,
    )


class AvatarController(Controller):
    path = "/api/v1/chat/personas/{persona_id:str}/avatar"
    tags = ["personas"]

    @put("/", status_code=200, request_max_body_size=None, operation_class=ImageBody)
    async def put_avatar(
        self, persona_id: FromPath[UUID], request: Request[Any, Any, Any], caller: CallerDep, avatars: AvatarsDep
    ) -> AvatarResponse:
        """Set the persona's avatar: the body is a PNG, JPEG or WebP image of at most 2 MB; owner or admin."""
        avatar = await avatars.put(caller, persona_id, await _read_image(request))
        return AvatarResponse(avatar=_out(avatar), message=f"Avatar set ({avatar.content_type})")

    @get(
        "/",
        operation_class=ImageAnswer,
        responses={
            **answers(bytes, "The image, in the type it was stored as"),
            304: ResponseSpec(None, description="Unchanged since the ETag in `If-None-Match`", generate_examples=False),
        },
    )
    async def get_avatar(
        self, persona_id: FromPath[UUID], request: Request[Any, Any, Any], caller: CallerDep, avatars: AvatarsDep
    ) -> Response[bytes]:
        """The persona's avatar, for whoever may see the persona; 404 when it has none."""
        avatar = await avatars.get(caller, persona_id)
        etag = f'"{avatar.sha256}"'
        headers = {"ETag": etag, "Cache-Control": _CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        if _matches(request.headers.get("if-none-match", ""), etag):
            return Response(b"", status_code=304, headers=headers)
        return Response(avatar.image, media_type=avatar.content_type, headers=headers)

    @delete("/", status_code=200)
    async def delete_avatar(
        self, persona_id: FromPath[UUID], caller: CallerDep, avatars: AvatarsDep
    ) -> MessageResponse:
        """Remove the persona's avatar; owner or admin."""
        removed = await avatars.delete(caller, persona_id)
        return MessageResponse(message="Avatar removed" if removed else "The persona had no avatar")
