"""Traces: each chat turn as one OpenTelemetry span in the generative-AI conventions, exported over OTLP/HTTP.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: nothing of
OpenTelemetry is imported then, and a turn checks one ``None``. On, the official SDK (the ``otel`` extra) exports
the spans in batches from a thread of its own, reading its own variables (``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``, ...); :meth:`Traces.aclose` flushes what is left at shutdown.

A turn's span is a child of the caller's W3C ``traceparent`` when one was sent (:data:`CALLER`, set per
request by the HTTP layer), and its own context goes upstream with the provider request
(:meth:`TurnSpan.headers`). Spans carry ids, names and counts, never a prompt, message text or a key.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
from typing import Any

__all__ = ["CALLER", "INSTALL", "Traces", "TracesUnavailable", "TurnSpan", "require"]

# The ``traceparent`` and ``tracestate`` headers of the request being served (None: it sent neither).
CALLER: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar("caller_trace", default=None)

# What to install for traces, said wherever they are asked for without the packages.
INSTALL = "pip install 'persona-runtime[otel]' (opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http)"

_PACKAGES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


class TracesUnavailable(RuntimeError):
    """Traces are asked for (an OTLP endpoint is set) but the OpenTelemetry packages are not installed."""


def require() -> None:
    """Raise :class:`TracesUnavailable`, saying what to install, unless the SDK and its exporter are installed."""
    for name in _PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise TracesUnavailable(
                f"OTEL_EXPORTER_OTLP_ENDPOINT is set, but {name} is not installed: {INSTALL}, "
                "or unset the variable to run without traces"
            )


class Traces:
    """The process's tracer: a span per turn, batched to the OTLP/HTTP ``endpoint`` (``.../v1/traces``)."""

    def __init__(self, endpoint: str) -> None:
        require()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "persona-runtime"}))
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("persona-runtime")
        self._propagator = TraceContextTextMapPropagator()
        self._client = SpanKind.CLIENT
        self._in_context = set_span_in_context

    def turn(
        self,
        *,
        provider: str,
        model: str,
        persona_id: str,
        persona_version: int,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
    ) -> TurnSpan:
        """Start the span of one turn (``chat <model>``), a child of the caller's trace context if it sent one."""
        parent = None
        caller = CALLER.get()
        if caller is not None:
            carrier = {"traceparent": caller[0]}
            if caller[1] is not None:
                carrier["tracestate"] = caller[1]
            parent = self._propagator.extract(carrier)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "persona.id": persona_id,
            "persona.version": persona_version,
        }
        if temperature is not None:
            attributes["gen_ai.request.temperature"] = temperature
        if top_p is not None:
            attributes["gen_ai.request.top_p"] = top_p
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        span = self._tracer.start_span(f"chat {model}", context=parent, kind=self._client, attributes=attributes)
        carrier = {}
        self._propagator.inject(carrier, context=self._in_context(span))
        return TurnSpan(span, tuple(carrier.items()))

    async def aclose(self) -> None:
        """Export the spans still batched, then stop the exporter (its HTTP calls run off the event loop)."""
        await asyncio.to_thread(self._provider.shutdown)


class TurnSpan:
    """One turn's span: where it was answered from, and how it ended (once)."""

    __slots__ = ("_ended", "_span", "headers")

    def __init__(self, span: Any, headers: tuple[tuple[str, str], ...]) -> None:
        self._span = span
        self._ended = False
        # The span's own context as W3C headers, for the upstream request: the provider's spans are its children.
        self.headers = headers

    def answered(self, provider: str, model: str) -> None:
        """The route that answered, when a fallback did rather than the first."""
        self._span.set_attribute("gen_ai.provider.name", provider)
        self._span.set_attribute("gen_ai.request.model", model)
        self._span.update_name(f"chat {model}")

    def end(
        self,
        outcome: str,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int = 0,
        finish_reason: str | None = None,
        error: str | None = None,
        conversation_id: str | None = None,
    ) -> None:
        """End the span: ``outcome`` is the turn's (complete, incomplete, error, rejected); ``error`` the code of
        what failed (its message is left out: an upstream one may quote the request)."""
        if self._ended:
            return
        self._ended = True
        span = self._span
        span.set_attribute("persona.outcome", outcome)
        if conversation_id is not None:
            span.set_attribute("gen_ai.conversation.id", conversation_id)
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if cached_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", cached_tokens)
        if finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
        if error is not None:
            from opentelemetry.trace import Status, StatusCode  # loaded with the SDK: a lookup in sys.modules

            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
