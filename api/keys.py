"""API keys over HTTP: a user's own keys, and admins creating users and their keys."""

from __future__ import annotations

from uuid import UUID

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from api.deps import AccountsDep, CallerDep, ResourcesDep
from api.schemas import (
    ApiKeyOut,
    CreateKeyRequest,
    CreateKeyResponse,
    CreateUserRequest,
    KeysResponse,
    MessageResponse,
    UserOut,
    UserResponse,
)
from core.errors import Forbidden, NotFound
from runtime.accounts import ApiKey

__all__ = ["AdminController", "KeyController"]


def _out(key: ApiKey) -> ApiKeyOut:
    return msgspec.convert(key, ApiKeyOut, from_attributes=True)


class KeyController(Controller):
    path = "/api/v1/keys"
    tags = ["keys"]

    @get("/")
    async def list_keys(self, caller: CallerDep, accounts: AccountsDep) -> KeysResponse:
        return KeysResponse(keys=[_out(k) for k in await accounts.list_keys(caller.user_id)])

    @post("/")
    async def create_key(
        self, data: JSONBody[CreateKeyRequest], caller: CallerDep, accounts: AccountsDep
    ) -> CreateKeyResponse:
        key, record = await accounts.create_key(caller.user_id, name=data.name, expires_in_days=data.expires_in_days)
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

    @staticmethod
    def _require_admin(caller: CallerDep) -> None:
        if not caller.is_admin:
            raise Forbidden("Only admins may manage users.")

    @post("/")
    async def create_user(
        self, data: JSONBody[CreateUserRequest], caller: CallerDep, accounts: AccountsDep
    ) -> UserResponse:
        self._require_admin(caller)
        user = await accounts.create_user(data.name, display_name=data.display_name, is_admin=data.is_admin)
        return UserResponse(user=msgspec.convert(user, UserOut, from_attributes=True))

    @post("/{user_id:str}/keys")
    async def create_key(
        self, user_id: FromPath[UUID], data: JSONBody[CreateKeyRequest], caller: CallerDep, accounts: AccountsDep
    ) -> CreateKeyResponse:
        self._require_admin(caller)
        key, record = await accounts.create_key(user_id, name=data.name, expires_in_days=data.expires_in_days)
        return CreateKeyResponse(key=key, api_key=_out(record))
