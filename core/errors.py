"""The one error tree of persona-runtime.

Every error a client can see is a ``PersonaRuntimeError`` subclass with a snake_case ``code`` and an HTTP
``status``; ``api/errors.py`` maps them to the two wire shapes (ours on ``/api/v1``, OpenAI's on
``/v1``). The tree::

    PersonaRuntimeError                  500 internal_error
    ├── BadRequest                       400 bad_request        (names the offending ``field``)
    │   ├── PayloadTooLarge              413 payload_too_large
    │   └── UnsupportedMediaType         415 unsupported_media_type (an upload of a type the route does not take)
    ├── Unauthorized                     401 unauthorized
    ├── Forbidden                        403 forbidden
    ├── NotFound                         404 not_found
    │   └── NotStreamed                  404 not_streamed       (a message answered whole: no events to replay)
    ├── Conflict                         409 conflict
    ├── StreamExpired                    410 stream_expired     (a finished stream past its retention)
    ├── RateLimited                      429 rate_limited       (a key's or persona's limit; carries ``retry_after``)
    ├── ServiceUnavailable               503 service_unavailable
    │   ├── DatabaseUnavailable          503 database_unavailable (carries ``retry_after``)
    │   └── Pending                    * 503 pending            (streamed, not saved yet: the database is away)
    └── ProviderError                    502 provider_error     (upstream LLM failed)
        ├── ProviderUnavailable          502 provider_unavailable (connection refused, 5xx)
        ├── ProviderRejected             502 provider_rejected  (upstream 4xx: bad key, unknown model)
        ├── ProviderTimeout              504 provider_timeout
        ├── ProviderRateLimited          429 provider_rate_limited (carries ``retry_after``)
        ├── ShuttingDown               * 503 shutting_down      (the server stopped before the answer ended)
        ├── Cancelled                  * 409 cancelled          (stopped by POST /messages/{id}/cancel)
        ├── ClientDisconnected         * 499 client_disconnected (the client left; stored, never sent)
        └── Interrupted                * 502 interrupted        (the stream ended without its end: its
                                                                 instance stopped, or it was swept)

``*`` marks the in-band end codes: how an answer that already started ended, in its ``error`` event
and its stored message, rather than an HTTP status. Each has a ``default`` message, so the places that
end a turn name the class and nothing else (``Interrupted()``).

It sits at the ground of the import graph: ``personas/``, ``providers/`` and ``runtime/`` raise these,
``api/`` renders them, and this module imports nothing of theirs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "Cancelled",
    "ClientDisconnected",
    "Conflict",
    "ContextOverflow",
    "DatabaseUnavailable",
    "Forbidden",
    "Interrupted",
    "NotFound",
    "NotStreamed",
    "PayloadTooLarge",
    "Pending",
    "PersonaRuntimeError",
    "ProviderContextExceeded",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RateLimited",
    "ServiceUnavailable",
    "ShuttingDown",
    "StreamExpired",
    "Unauthorized",
    "UnsupportedMediaType",
]


class PersonaRuntimeError(Exception):
    """Base of every error the runtime reports to a client."""

    code = "internal_error"
    status = 500
    # The message when none is given.
    default = "Internal error; it has been logged."

    def __init__(self, message: str = "", *, field: str | None = None, details: Any = None) -> None:
        message = message or self.default
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def __str__(self) -> str:
        return self.message


class BadRequest(PersonaRuntimeError):
    code = "bad_request"
    status = 400


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(BadRequest):
    code = "unsupported_media_type"
    status = 415


class ContextOverflow(BadRequest):
    """What a turn can never drop (system text, tools, the latest message) exceeds the model's context budget.

    ``details`` says which ``part``, by how many tokens (``overshoot``), the ``budget`` and the part's ``tokens``.
    """

    code = "context_overflow"


class Unauthorized(PersonaRuntimeError):
    code = "unauthorized"
    status = 401


class Forbidden(PersonaRuntimeError):
    code = "forbidden"
    status = 403


class NotFound(PersonaRuntimeError):
    code = "not_found"
    status = 404


class NotStreamed(NotFound):
    """The message was answered without a stream (``"stream": false``, a greeting): it has no events to replay."""

    code = "not_streamed"


class Conflict(PersonaRuntimeError):
    code = "conflict"
    status = 409


class StreamExpired(PersonaRuntimeError):
    code = "stream_expired"
    status = 410


class RateLimited(PersonaRuntimeError):
    """A rate limit or token budget of the key or the persona is used up: retry in ``retry_after`` seconds.

    ``scope`` says whose limit it is: ``key`` or ``persona``.
    """

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: float, scope: str, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after
        self.scope = scope


class ServiceUnavailable(PersonaRuntimeError):
    code = "service_unavailable"
    status = 503


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL is down or restarting: the request may be retried in ``retry_after`` seconds."""

    code = "database_unavailable"
    retry_after: float | None = 2.0


class Pending(ServiceUnavailable):
    """The answer reached the client but not the database yet. A retry may still keep it, so the stream says
    neither "done" nor "not saved": the message's status in the conversation tells the end of the story."""

    code = "pending"
    default = (
        "The answer was streamed but is not saved yet: the database is unavailable. It is being retried "
        "for about half a minute; the message's status in the conversation (GET /api/v1/chat/conversations/{id}) "
        "is `pending` until it is kept."
    )


class ProviderError(PersonaRuntimeError):
    """The upstream LLM provider failed; ``provider`` names which one."""

    code = "provider_error"
    status = 502

    def __init__(self, message: str = "", *, provider: str = "", details: Any = None) -> None:
        super().__init__(message, details=details)
        self.provider = provider


class ProviderUnavailable(ProviderError):
    """Connection refused or reset, or a 5xx: worth trying a fallback."""

    code = "provider_unavailable"


class ProviderRejected(ProviderError):
    """The provider refused the request (bad key, unknown model, invalid body): a fallback won't help."""

    code = "provider_rejected"


class ProviderContextExceeded(ProviderRejected):
    """The provider refused the request for its length; ``overshoot`` is by how many tokens, when it said."""

    code = "provider_context_exceeded"

    def __init__(self, message: str = "", *, provider: str = "", details: Any = None, overshoot: int | None = None):
        super().__init__(message, provider=provider, details=details)
        self.overshoot = overshoot


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    status = 504


class ShuttingDown(ProviderError):
    """The server is stopping and its grace period ran out while the answer was still streaming."""

    code = "shutting_down"
    status = 503
    default = "The server is shutting down; the answer was cut short. Send the message again."


class Cancelled(ProviderError):
    """The answer was stopped on request; what was said so far is stored as incomplete."""

    code = "cancelled"
    status = 409
    default = "The answer was stopped on request."


class ClientDisconnected(ProviderError):
    """The client went away before the answer ended: stored with the partial answer, sent to nobody."""

    code = "client_disconnected"
    status = 499
    default = "The client went away."


class Interrupted(ProviderError):
    """A stream ended without its own final event and its stored message says nothing better: its instance
    stopped mid-answer, or the answer was swept as abandoned."""

    code = "interrupted"
    default = "The answer stopped before its end; what was said is stored as incomplete."


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"
    status = 429

    def __init__(
        self, message: str = "", *, provider: str = "", retry_after: float | None = None, details: Any = None
    ) -> None:
        super().__init__(message, provider=provider, details=details)
        self.retry_after = retry_after
