"""API keys over HTTP: a user's own keys, and admins creating users and their keys and setting their limits."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody, Parameter

from api.deps import AccountsDep, CallerDep, Limit, Offset, ResourcesDep
from api.schemas import (
    ApiKeyOut,
    CreateKeyRequest,
    CreateKeyResponse,
    CreateUserRequest,
    KeyLimitsRequest,
    KeyResponse,
    KeysResponse,
    MessageResponse,
    UserListResponse,
    UserOut,
    UserResponse,
)
from core.errors import Forbidden, NotFound
from runtime.access.accounts import ApiKey
from runtime.access.limits import KeyUsage

__all__ = ["AdminController", "AdminKeyController", "KeyController"]


def _out(key: ApiKey, usage: KeyUsage | None = None) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        limits=key.limits,
        usage=usage,
    )


def _require_admin(caller: CallerDep, what: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"Only admins may {what}.")


class KeyController(Controller):
    path = "/api/v1/keys"
    tags = ["keys"]

    @get("/")
    async def list_keys(self, caller: CallerDep, resources: ResourcesDep) -> KeysResponse:
        """The caller's keys, each with its limits and what it used in the current windows."""
        keys = await resources.accounts.list_keys(caller.user_id)
        limiter = resources.limiter
        counted = [k for k in keys if limiter.key_limits(k.limits).any]
        usage = dict(zip([k.id for k in counted], await limiter.usage([k.id for k in counted]), strict=True))
        return KeysResponse(keys=[_out(k, usage.get(k.id)) for k in keys])

    @post("/")
    async def create_key(
        self, data: JSONBody[CreateKeyRequest], caller: CallerDep, resources: ResourcesDep
    ) -> CreateKeyResponse:
        limits = resources.limiter.bound_chosen(data.limits, caller)
        key, record = await resources.accounts.create_key(
            caller.user_id,
            name=data.name,
            expires_in_days=data.expires_in_days,
            limits=limits,
            max_live=resources.settings.max_keys_per_user,
        )
        return CreateKeyResponse(key=key, api_key=_out(record))

    @delete("/{key_id:str}", status_code=200)
    async def revoke_key(self, key_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep) -> MessageResponse:
        key = await resources.accounts.get_key(key_id)
        if key is None or (key.user_id != caller.user_id and not caller.is_admin):
            raise NotFound(f"API key {key_id} not found.", field="key_id")
        await resources.accounts.revoke_key(key_id)
        resources.auth.forget()
        return MessageResponse(message=f"API key {key.prefix}… revoked")


class AdminController(Controller):
    path = "/api/v1/admin/users"
    tags = ["admin"]

    @get("/")
    async def list_users(
        self,
        caller: CallerDep,
        accounts: AccountsDep,
        limit: Limit = 50,
        offset: Offset = 0,
        q: Annotated[str | None, Parameter(max_length=100, description="Part of a name or display name")] = None,
    ) -> UserListResponse:
        _require_admin(caller, "list users")
        users, total = await accounts.list_users(q, limit=limit, offset=offset)
        return UserListResponse(users=[msgspec.convert(u, UserOut, from_attributes=True) for u in users], total=total)

    @post("/")
    async def create_user(
        self, data: JSONBody[CreateUserRequest], caller: CallerDep, accounts: AccountsDep
    ) -> UserResponse:
        _require_admin(caller, "manage users")
        user = await accounts.create_user(data.name, display_name=data.display_name, is_admin=data.is_admin)
        return UserResponse(user=msgspec.convert(user, UserOut, from_attributes=True))

    @post("/{user_id:str}/keys")
    async def create_key(
        self, user_id: FromPath[UUID], data: JSONBody[CreateKeyRequest], caller: CallerDep, resources: ResourcesDep
    ) -> CreateKeyResponse:
        _require_admin(caller, "manage users")
        key, record = await resources.accounts.create_key(
            user_id,
            name=data.name,
            expires_in_days=data.expires_in_days,
            limits=data.limits,
            max_live=resources.settings.max_keys_per_user,
        )
        return CreateKeyResponse(key=key, api_key=_out(record))


class AdminKeyController(Controller):
    path = "/api/v1/admin/keys"
    tags = ["admin"]

    @patch("/{key_id:str}")
    async def set_limits(
        self, key_id: FromPath[UUID], data: JSONBody[KeyLimitsRequest], caller: CallerDep, resources: ResourcesDep
    ) -> KeyResponse:
        """Replace a key's limits; they bite on every instance within a second (the key lookup's cache)."""
        _require_admin(caller, "change a key's limits")
        key = await resources.accounts.set_key_limits(key_id, data.limits)
        if key is None:
            raise NotFound(f"API key {key_id} not found.", field="key_id")
        resources.auth.forget()
        return KeyResponse(api_key=_out(key), message=f"Limits of API key {key.prefix}… changed")
