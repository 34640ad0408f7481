"""Authentication middleware: every route but the public ones needs an API key."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from personas.models import Caller
from runtime.server.resources import Resources

__all__ = ["KEY_IN_QUERY", "ApiKeyMiddleware", "caller"]


def _key_from_headers(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    key = connection.headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = connection.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    # A browser's EventSource cannot send headers: the one route it reads says so (``opt``), found by the route
    # the request matched, never by the look of its path.
    if connection.scope.get("method") == "GET" and connection.route_handler.opt.get(KEY_IN_QUERY):
        return connection.query_params.get("api_key") or None
    return None


# A route handler's ``opt`` flag: this GET route may take the key as ``?api_key=`` (for EventSource).
KEY_IN_QUERY = "key_in_query"


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """Accepts ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (what the OpenAI and Anthropic SDKs send),
    and ``?api_key=KEY`` on ``GET /api/v1/chat/messages/{id}/events`` only, for ``EventSource``. The access
    log never shows that query value."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        resources: Resources = connection.app.state.resources
        found = await resources.auth.authenticate(_key_from_headers(connection))
        return AuthenticationResult(user=found, auth=None)


def caller(request: Request[Any, Any, Any], resources: NamedDependency[Resources]) -> Caller:
    """Dependency: the authenticated caller of this request.

    It takes ``resources`` only to come after it: Litestar resolves the dependencies of one level in an
    anyio task group, which costs a streaming route a tenth of its CPU; ``caller`` and ``resources`` on
    two levels are resolved one after the other, with none.
    """
    user: Caller = request.user
    return user
