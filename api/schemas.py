"""Wire types of the persona, key and user APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from msgspec import Meta, Struct

from personas.models import Limits, Persona
from runtime.access.limits import KeyUsage

__all__ = [
    "ApiKeyOut",
    "AvatarOut",
    "AvatarResponse",
    "CreateKeyRequest",
    "CreateKeyResponse",
    "CreateUserRequest",
    "CurrentPersonaResponse",
    "InitializeDefaultResponse",
    "KeyLimitsRequest",
    "KeyResponse",
    "KeysResponse",
    "MessageResponse",
    "PersonaListResponse",
    "PersonaResponse",
    "SetPersonaRequest",
    "SetPersonaResponse",
    "UserOut",
    "UserResponse",
]


class _Body(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are refused by name."""


class _Reply(Struct, frozen=True, kw_only=True):
    success: bool = True


class MessageResponse(_Reply, frozen=True, kw_only=True):
    message: str


class AvatarOut(Struct, frozen=True, kw_only=True):
    """A stored avatar, without its bytes (GET the avatar route for those)."""

    content_type: Literal["image/png", "image/jpeg", "image/webp"]
    size: int
    sha256: str
    updated_at: datetime


class AvatarResponse(_Reply, frozen=True, kw_only=True):
    avatar: AvatarOut
    message: str


class PersonaListResponse(_Reply, frozen=True, kw_only=True):
    personas: list[Persona]
    total: int
    message: str = "Personas retrieved successfully"


class PersonaResponse(_Reply, frozen=True, kw_only=True):
    persona: Persona
    message: str


class CurrentPersonaResponse(_Reply, frozen=True, kw_only=True):
    persona: Persona
    source: Literal["preference", "default"]
    message: str


class SetPersonaRequest(_Body, frozen=True, kw_only=True):
    persona_id: UUID


class SetPersonaResponse(_Reply, frozen=True, kw_only=True):
    message: str
    persona_id: UUID
    persona_name: str


class InitializeDefaultResponse(_Reply, frozen=True, kw_only=True):
    message: str
    persona: Persona
    was_created: bool


class ApiKeyOut(Struct, frozen=True, kw_only=True):
    id: UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: Limits
    # What the key used in the current windows; null when no limit applies to it (nothing is counted then).
    usage: KeyUsage | None = None


class KeysResponse(_Reply, frozen=True, kw_only=True):
    keys: list[ApiKeyOut]


class CreateKeyRequest(_Body, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    expires_in_days: Annotated[int, Meta(ge=1, le=3650)] | None = None
    limits: Limits | None = None


class KeyLimitsRequest(_Body, frozen=True, kw_only=True):
    """A key's new limits: each one left out or null is no limit of its own (the defaults then apply)."""

    limits: Limits


class KeyResponse(_Reply, frozen=True, kw_only=True):
    api_key: ApiKeyOut
    message: str


class CreateKeyResponse(_Reply, frozen=True, kw_only=True):
    key: str
    api_key: ApiKeyOut
    message: str = "Store this key now: it is shown only once."


class CreateUserRequest(_Body, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    display_name: Annotated[str, Meta(max_length=200)] | None = None
    is_admin: bool = False


class UserOut(Struct, frozen=True, kw_only=True):
    id: UUID
    name: str
    display_name: str | None
    is_admin: bool
    created_at: datetime


class UserResponse(_Reply, frozen=True, kw_only=True):
    user: UserOut


class UserListResponse(_Reply, frozen=True, kw_only=True):
    users: list[UserOut]
    total: int
