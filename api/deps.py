"""Dependencies handed to controllers: the caller and the services, taken from the app's resources."""

from __future__ import annotations

from typing import Annotated, Any

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import Parameter

from api.auth import caller
from personas.avatars import Avatars
from personas.models import Caller
from personas.porter import PersonaPorter
from personas.service import PersonaService
from runtime.access.accounts import Accounts
from runtime.authoring.service import AuthoringService
from runtime.server.resources import Resources

__all__ = [
    "AccountsDep",
    "AuthoringDep",
    "AvatarsDep",
    "CallerDep",
    "Limit",
    "Offset",
    "PersonasDep",
    "PorterDep",
    "ResourcesDep",
    "VersionNumber",
    "dependencies",
]


def _resources(state: State) -> Resources:
    resources: Resources = state.resources
    return resources


def _personas(state: State) -> PersonaService:
    return _resources(state).personas


def _porter(state: State) -> PersonaPorter:
    return _resources(state).porter


def _avatars(state: State) -> Avatars:
    return _resources(state).avatars


def _authoring(state: State) -> AuthoringService:
    return _resources(state).authoring


def _accounts(state: State) -> Accounts:
    return _resources(state).accounts


dependencies: dict[str, Any] = {
    "caller": Provide(caller, sync_to_thread=False),
    "resources": Provide(_resources, sync_to_thread=False),
    "personas": Provide(_personas, sync_to_thread=False),
    "accounts": Provide(_accounts, sync_to_thread=False),
    "porter": Provide(_porter, sync_to_thread=False),
    "authoring": Provide(_authoring, sync_to_thread=False),
    "avatars": Provide(_avatars, sync_to_thread=False),
}

CallerDep = NamedDependency[Caller]
ResourcesDep = NamedDependency[Resources]
PersonasDep = NamedDependency[PersonaService]
AccountsDep = NamedDependency[Accounts]
PorterDep = NamedDependency[PersonaPorter]
AuthoringDep = NamedDependency[AuthoringService]
AvatarsDep = NamedDependency[Avatars]

# Paging of every list route. Numbers are bounded by the columns and SQL parameters they meet (OFFSET is a
# bigint, a version an integer), so an out-of-range one is a 400 naming it rather than a driver overflow.
Limit = Annotated[int, Parameter(ge=1, le=200, description="Page size")]
Offset = Annotated[int, Parameter(ge=0, le=2**63 - 1, description="Items to skip")]
VersionNumber = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="A saved version of the persona")]
