"""Exception handlers: each error in its route's shape: ours on /api/v1, Anthropic's on /v1/messages, else OpenAI's."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from core.db import is_database_unavailable
from core.errors import PersonaRuntimeError
from core.logs import REQUEST_ID
from personas.models import WRITABLE_FIELDS

__all__ = ["anthropic_error", "anthropic_error_type", "exception_handlers", "openai_error_type"]

log = logging.getLogger("persona_runtime.api")

_AT_PATH = re.compile(r" - at `\$(?:\.data)?\.?(.*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`")
_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]+)`")
# Routes whose whole body is a persona (create, update), and the path of a draft inside other bodies.
_PERSONA_BODY = re.compile(r"^/api/v1/chat/personas(?:/[0-9a-fA-F-]{36})?/?$")
_IN_DRAFT = re.compile(r"^(?:candidates\[\d+\]\.)?persona\.")


# Our codes OpenAI has a name of its own for, which its SDKs and clients look for.
_OPENAI_CODES = {"rate_limited": "rate_limit_exceeded", "context_overflow": "context_length_exceeded"}


def openai_error_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        409: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status: its own for the statuses it documents, the nearest otherwise.

    Our provider failures keep their statuses: a 502 is an ``api_error`` (the upstream failed, not the
    request), a 504 a ``timeout_error``; a 503 (the database is down) means "try again shortly", as
    Anthropic's ``overloaded_error`` does.
    """
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error body: the whole answer of a failed request, and the ``data`` of a stream's ``error``."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def _render(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    path = request.url.path
    if _is_anthropic(path):
        body: dict[str, Any] = anthropic_error(anthropic_error_type(status), message)
    elif path.startswith("/v1/"):
        code = _OPENAI_CODES.get(code, code)
        body = {"error": {"message": message, "type": openai_error_type(status), "code": code, "param": field}}
    else:
        error: dict[str, Any] = {"code": code, "details": details}
        if field is not None:
            error["field"] = field
        body = {"success": False, "message": message, "error": error}
    # Every shape names the request, so a report of the error finds its log lines.
    body["error"]["request_id"] = REQUEST_ID.get()
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _runtime_error(request: Request[Any, Any, Any], exc: PersonaRuntimeError) -> Response[Any]:
    headers = None
    retry_after = getattr(exc, "retry_after", None)  # rate limits and database outages say when to retry
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, round(retry_after)))}
    return _render(request, exc.status, exc.code, exc.message, field=exc.field, details=exc.details, headers=headers)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Say which field is wrong and how, from msgspec's own account of the failure."""
    if _is_malformed(exc):
        return _malformed(request, exc)
    cause = exc.__cause__
    message = str(cause) if cause is not None else str(exc.detail)
    field: str | None = None
    path = _AT_PATH.search(message)
    if path:
        message = message[: path.start()]
        field = path.group(1) or None
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown:
        name = unknown.group(1)
        field = f"{field}.{name}" if field else name
        text = f"Unknown field `{field}`: remove it."
        # A persona body, whole or as a draft inside an authoring request (`persona`, `candidates[1].persona`).
        persona_field = _IN_DRAFT.sub("", field)
        if persona_field in {"id", "created_by", "version", "created_at", "updated_at", "is_active"} and (
            persona_field != field or _PERSONA_BODY.match(request.url.path)
        ):
            text = f"Field `{field}` is set by the server and cannot be written: remove it."
        if "." not in persona_field and (persona_field != field or _PERSONA_BODY.match(request.url.path)):
            text += " Writable fields: " + ", ".join(WRITABLE_FIELDS) + "."
        return _render(request, 400, "unknown_field", text, field=field)
    missing = _MISSING_FIELD.match(message)
    if missing:
        name = f"{field}.{missing.group(1)}" if field else missing.group(1)
        return _render(request, 400, "missing_field", f"`{name}` is required.", field=name)
    if exc.extra and field is None:
        first = exc.extra[0] if isinstance(exc.extra, list) else exc.extra
        if isinstance(first, dict):
            key = first.get("key")
            field = key if key and key != "data" else None
            message = first.get("message", message)
    text = f"Invalid `{field}`: {message}." if field else f"Invalid request: {message}."
    return _render(request, 400, "invalid_field" if field else "bad_request", text, field=field)


def _is_malformed(exc: HTTPException) -> bool:
    cause = exc.__cause__
    undecodable = isinstance(cause, msgspec.DecodeError) and not isinstance(cause, msgspec.ValidationError)
    return undecodable or str(exc.detail).startswith(("JSON is malformed", "Input data was truncated"))


def _malformed(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    reason = str(exc.__cause__ or exc.detail).removeprefix("JSON is malformed: ")
    return _render(request, 400, "malformed_json", f"The request body is not valid JSON: {reason}.")


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    code = {
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }.get(status, "bad_request" if status < 500 else "internal_error")
    message = str(exc.detail)
    if _is_malformed(exc):
        return _malformed(request, exc)
    if status == 404:
        message = f"No route {request.method} {request.url.path}; see /schema for the API."
    return _render(request, status, code, message, headers=exc.headers)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if is_database_unavailable(exc):
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _render(
            request,
            503,
            "database_unavailable",
            "The database is unavailable; try again in a moment.",
            headers={"Retry-After": "2"},
        )
    log.exception("unexpected error during %s %s", request.method, request.url.path)
    return _render(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Internal error; it has been logged.")


exception_handlers: dict[Any, Any] = {
    PersonaRuntimeError: _runtime_error,
    ValidationException: _validation_error,
    NotAuthorizedException: _http_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}
