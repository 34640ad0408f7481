"""The upstream call the HTTP adapters share: the streaming POST, SSE framing, status mapping and secret-free
messages."""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Protocol

import msgspec

from core.errors import (
    ProviderContextExceeded,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from core.events import ProviderEvent
from providers._http import HttpPool, HttpResponse, PoolFull

_MAX_DETAIL = 300


async def one_by_one(batches: AsyncGenerator[list[ProviderEvent], None]) -> AsyncIterator[ProviderEvent]:
    """The events of a batched stream one at a time; closing this closes the stream."""
    async with contextlib.aclosing(batches) as stream:
        async for batch in stream:
            for event in batch:
                yield event


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
    if status in (400, 413, 422) and _too_long(body, detail):
        return ProviderContextExceeded(
            f"Provider '{provider}' refused the request for its length (HTTP {status}){suffix}.",
            provider=provider,
            details=details,
            overshoot=_overshoot(detail),
        )
    hint = " Check the provider's API key." if status in (401, 403) else ""
    return ProviderRejected(
        f"Provider '{provider}' rejected the request (HTTP {status}){suffix}.{hint}",
        provider=provider,
        details=details,
    )


# How providers say a request is too long: OpenAI's and vLLM's "maximum context length is N tokens. However, you
# requested M tokens", Anthropic's "prompt is too long: M tokens > N maximum".
_TOO_LONG = re.compile(r"context length|context_length|too long|context window|too many tokens", re.IGNORECASE)
_OPENAI_NUMBERS = re.compile(r"maximum context length is (\d+) tokens.*?(?:resulted in|requested) (\d+) tokens", re.S)
_ANTHROPIC_NUMBERS = re.compile(r"(\d+) tokens > (\d+) maximum")


def _too_long(body: object, detail: str) -> bool:
    if isinstance(body, Mapping):
        error: Any = body.get("error", body)
        if isinstance(error, Mapping) and error.get("code") == "context_length_exceeded":
            return True
    return bool(_TOO_LONG.search(detail))


def _overshoot(detail: str) -> int | None:
    """By how many tokens the request was over, when the provider's message says."""
    found = _OPENAI_NUMBERS.search(detail)
    if found:
        return max(int(found.group(2)) - int(found.group(1)), 1)
    found = _ANTHROPIC_NUMBERS.search(detail)
    if found:
        return max(int(found.group(1)) - int(found.group(2)), 1)
    return None


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


class SSESplitter:
    """Cuts a server-sent event stream into ``(event, data)`` pairs as its bytes arrive.

    Events end at a blank line; ``data:`` lines join with newlines, ``event:`` names the event, and
    comments (``: ping``), ``id:`` and ``retry:`` carry nothing the adapters use. CR LF and lone CR
    line ends are read as LF, even when a CR LF is split between two reads.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        if self._buffer:
            data = self._buffer + data
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):  # maybe the first half of a CR LF
                data, held = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, rest = data.split(b"\n\n")
        self._buffer = rest + held
        events = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((b"", block[6:]))  # the common shape: one data line
                continue
            name, lines = b"", []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
            if lines:
                events.append((name, b"\n".join(lines)))
        return events

    def feed_plain(self, data: bytes) -> list[bytes] | None:
        """The ``data`` of each event completed by ``data``, when every one of them is a lone ``data: `` line
        and no CR is about: the shape OpenAI-compatible servers send, cut in one pass over the read.

        ``None``, with nothing consumed, for any other shape: :meth:`feed` reads it then.
        """
        whole = self._buffer + data if self._buffer else data
        if b"\r" in whole:
            return None
        cut = whole.rfind(b"\n\n")
        if cut < 0:
            self._buffer = whole
            return []
        if not whole.startswith(b"data: "):  # then every blank line is past the prefix: `cut` >= 6
            return None
        payloads = whole[6:cut].split(b"\n\ndata: ")
        # Any other line (an `event:`, a comment, a data line of several) or a blank line more leaves a line end
        # inside a payload. Found by one memchr over the joined payloads: counting line ends byte by byte over
        # the read cost a stream about 2 % of its CPU.
        if b"\n" in b"".join(payloads):
            return None
        self._buffer = whole[cut + 2 :]
        return payloads

    def end(self) -> list[tuple[bytes, bytes]]:
        """An event the stream ended without its blank line."""
        rest, self._buffer = self._buffer, b""
        return self.feed(rest + b"\n\n") if rest.strip() else []


class EventReader(Protocol):
    """One vendor's stream events turned into ours."""

    def feed(self, event: bytes, data: bytes, out: list[ProviderEvent]) -> bool:
        """Append the events ``data`` decodes to; True when it was the stream's last event."""
        ...

    def end(self, out: list[ProviderEvent]) -> None:
        """Append the closing ``Usage`` and ``Finish``, or raise when the stream broke off before its end."""
        ...


class PlainReader(EventReader, Protocol):
    """A reader that also takes a read's events at once when each is a lone ``data:`` line."""

    def feed_plain(self, payloads: list[bytes], out: list[ProviderEvent]) -> bool:
        """:meth:`feed` for each of ``payloads`` (events without a name), in order."""
        ...


_decode_json = msgspec.json.Decoder().decode


def _error_body(raw: bytes) -> object:
    try:
        return _decode_json(raw)
    except msgspec.DecodeError:
        return {"error": {"message": raw[:_MAX_DETAIL].decode("utf-8", "replace")}}


async def stream_batches(
    name: str, pool: HttpPool, prepared: bytes, body: bytes, reader: EventReader, secret: str | None
) -> AsyncGenerator[list[ProviderEvent], None]:
    """POST ``body`` and yield the events of each read of the SSE answer, with failures mapped to our errors.

    Everything one socket read brings comes out as one list, so the runtime can write it to its client
    at once. Closing the iterator early drops the connection, which cancels the upstream request.
    """
    try:
        response = await pool.post(prepared, body)
    except PoolFull as exc:
        raise ProviderUnavailable(
            f"Provider '{name}' has {exc}: too many answers are streaming at once. Retry, or raise "
            "PROVIDER_MAX_CONNECTIONS.",
            provider=name,
        ) from exc
    except TimeoutError as exc:
        raise timeout_error(name) from exc
    except OSError as exc:
        raise connection_error(name) from exc
    try:
        if response.status >= 300:
            raw = await response.read()
            raise error_for_status(name, response.status, response.headers, _error_body(raw), secret)
        splitter = SSESplitter()
        plain: PlainReader | None = reader if hasattr(reader, "feed_plain") else None  # type: ignore[assignment]
        while True:
            data = await response.chunk()
            payloads = splitter.feed_plain(data) if plain is not None and data is not None else None
            events = () if payloads is not None else splitter.end() if data is None else splitter.feed(data)
            out: list[ProviderEvent] = []
            finished = False
            try:
                if payloads is not None:
                    finished = plain.feed_plain(payloads, out)  # type: ignore[union-attr]
                for event, payload in events:
                    if reader.feed(event, payload, out):
                        finished = True
                        break
                if finished or data is None:
                    reader.end(out)
            except ProviderError:
                if out:
                    yield out  # what came before the failure, in the order it came
                raise
            if finished:
                _finish_reading(response)
            if finished or data is None:
                yield out
                return
            if out:
                yield out
    except ProviderError:
        raise
    except TimeoutError as exc:
        raise timeout_error(name) from exc
    except OSError as exc:
        raise broken_stream_error(name, "the connection was lost") from exc
    finally:
        response.close()


def _finish_reading(response: HttpResponse) -> None:
    """Read what is left of a finished body (usually nothing but its end) so the connection can be reused.

    When the end has not arrived yet, the pool waits for it briefly in the background; the answer is
    complete either way.
    """
    if response.complete:
        response.close()
    else:
        response.drain()
