"""Helpers the HTTP adapters share: SSE framing, status mapping and secret-free messages."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import httpx2

from core.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.events import ProviderEvent

_MAX_DETAIL = 300


def timeout_errors() -> tuple[type[BaseException], ...]:
    """Read/connect timeout exception types of the HTTP stacks the SDKs may run on."""
    legacy = sys.modules.get("httpx")  # only when something else already imported it
    errors: tuple[type[BaseException], ...] = (httpx2.TimeoutException, TimeoutError)
    return errors if legacy is None else (*errors, legacy.TimeoutException)


def transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the connection broke while a response body was being read."""
    legacy = sys.modules.get("httpx")
    errors: tuple[type[BaseException], ...] = (
        httpx2.TransportError,
        httpx2.StreamError,
        anyio.EndOfStream,
        anyio.BrokenResourceError,
        OSError,
    )
    return errors if legacy is None else (*errors, legacy.TransportError, legacy.StreamError)


def redact(text: str, secret: str | None) -> str:
    """Shorten an upstream message and remove the key from it, should a server echo it back."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return text


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after`` (seconds or an HTTP date) or OpenAI's ``retry-after-ms``."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    value_ms = headers.get("retry-after-ms")
    if value_ms:
        try:
            return max(0.0, float(value_ms) / 1000)
        except ValueError:
            return None
    return None


def upstream_message(body: object) -> str:
    """The human part of a vendor error body: ``{"error": {"message": ...}}`` in both APIs."""
    if isinstance(body, Mapping):
        error: Any = body.get("error", body)
        if isinstance(error, Mapping):
            message = error.get("message")
            if isinstance(message, str):
                return message
        elif isinstance(error, str):
            return error
    return ""


def error_for_status(
    provider: str, status: int, headers: Mapping[str, str], body: object, secret: str | None
) -> ProviderError:
    """Map an upstream HTTP error status to our error tree."""
    detail = redact(upstream_message(body), secret)
    suffix = f": {detail}" if detail else ""
    details = {"status": status}
    if status == 429:
        retry_after = parse_retry_after(headers)
        return ProviderRateLimited(
            f"Provider '{provider}' is rate limiting requests (HTTP 429){suffix}. Retry later.",
            provider=provider,
            retry_after=retry_after,
            details=details,
        )
    if status == 408:
        return ProviderTimeout(
            f"Provider '{provider}' timed out (HTTP 408){suffix}.", provider=provider, details=details
        )
    if status >= 500:
        return ProviderUnavailable(
            f"Provider '{provider}' is unavailable (HTTP {status}){suffix}. Try again or use a fallback.",
            provider=provider,
            details=details,
        )
    hint = " Check the provider's API key." if status in (401, 403) else ""
    return ProviderRejected(
        f"Provider '{provider}' rejected the request (HTTP {status}){suffix}.{hint}",
        provider=provider,
        details=details,
    )


def timeout_error(provider: str) -> ProviderTimeout:
    return ProviderTimeout(
        f"Provider '{provider}' did not answer in time. Try again, or raise its timeout.", provider=provider
    )


def connection_error(provider: str) -> ProviderUnavailable:
    return ProviderUnavailable(
        f"Could not reach provider '{provider}'. Check its base URL and that the server is running.",
        provider=provider,
    )


def broken_stream_error(provider: str, why: str) -> ProviderUnavailable:
    return ProviderUnavailable(f"Provider '{provider}' broke off the stream: {why}.", provider=provider)


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` for each server-sent event; ``event`` is "" when the server names none."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            event = line[6:].strip()
        # comments (": ping") and id/retry fields carry nothing we use
    if data:
        yield event, "\n".join(data)


async def drain(lines: AsyncIterator[str], seconds: float = 1.0) -> None:
    """Consume what is left of a finished stream (usually nothing but its end), briefly.

    A response closed before its body ends cannot be reused; one read to the end can. A server that
    keeps talking after its final event is cut off after ``seconds``: the answer is complete anyway.
    """
    with contextlib.suppress(TimeoutError, *transport_errors()):
        async with asyncio.timeout(seconds):
            async for _ in lines:
                pass


async def read_stream(
    name: str,
    response: httpx2.Response,
    events: Callable[[AsyncIterator[str]], AsyncIterator[ProviderEvent]],
) -> AsyncIterator[ProviderEvent]:
    """The events a vendor's SSE body decodes to, with transport failures mapped to our errors.

    The body is read to its end so that the connection goes back to the pool for the next stream.
    """
    lines = response.aiter_lines()
    try:
        async for event in events(lines):
            yield event
        await drain(lines)
    except ProviderError:
        raise
    except timeout_errors() as exc:
        raise timeout_error(name) from exc
    except transport_errors() as exc:
        raise broken_stream_error(name, "the connection was lost") from exc
    finally:
        await response.aclose()
