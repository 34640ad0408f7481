"""Prometheus metrics: the series section 7 of the contract names, correct across ``--workers``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``serve`` sets it to a fresh folder for its workers), every worker
writes its figures to files there and ``/metrics`` adds up all of them; without it (one process, tests) the
figures live in this object's own registry. No label carries a key, a prompt, message text or anything else a
user chose: providers and models are labelled only by the names this server is configured with, any other
``other`` (:meth:`Metrics.allow`), so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

__all__ = ["CONTENT_TYPE", "OTHER", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "persona_runtime_"
# The label of a provider or model this server was not configured with.
OTHER = "other"
# First-token and whole-turn times, seconds: fine below a second, coarse above.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _KeptChildren:
    """``labels()`` through a dict of the children already made.

    prometheus_client's own ``labels()`` checks and converts its arguments and takes a lock each time, about
    3.5 µs; a turn asks for a dozen children, almost always the same ones. A child, once made, is the same
    object prometheus_client would return, so what it counts and how it is rendered do not change.
    """

    _labelnames: tuple[str, ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._kept_children: dict[tuple[Any, ...], Any] = {}
        super().__init__(*args, **kwargs)

    def labels(self, *values: Any, **named: Any) -> Any:
        key = values or tuple(named.get(n) for n in self._labelnames)
        child = self._kept_children.get(key)
        if child is None:
            child = self._kept_children[key] = super().labels(*values, **named)  # type: ignore[misc]
        return child


class _ProcessId:
    """This process's id, read once and again after a fork.

    In multiprocess mode prometheus_client asks for the process id on every ``inc`` and ``observe`` (to notice
    a fork and open files of the child's own), and ``os.getpid`` is a system call each time: a turn makes
    about twenty of them. The id can change only at a fork, so it is read then.
    """

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


_process_id: _ProcessId | None = None


_pack_two_doubles = struct.Struct("dd").pack


def _lean_values(process_id: _ProcessId) -> type:
    """prometheus_client's multiprocess value with an ``inc`` of one step.

    Its own ``inc`` (a counter's increment, a gauge's move, both halves of a histogram's observation) is
    five calls, about 7,700 instructions, and a turn makes a dozen and more. Between forks this one writes
    the same 16 bytes at the same place of the same file by the same direct assignment (``mmap_dict``'s
    ``_pack_two_doubles``), in one call. Every value of the process is written from its event loop's
    thread, which is what the module's lock guarded. The first ``inc`` after a fork, and a value not yet
    in its file, go through prometheus_client's own ``inc``, which reopens the files as the child's.
    """
    base: Any = values.MultiProcessValue(process_identifier=process_id)
    known = [process_id.value]  # the process id prometheus_client last checked

    class _Value(base):
        def inc(self, amount: float) -> None:
            try:
                file = self._file
                position = file._positions.get(self._key) if process_id.value == known[0] else None
                mapped = file._m
            except AttributeError:  # a prometheus_client whose file is kept otherwise: its own inc, always
                position = None
            if position is None:
                base.inc(self, amount)
                known[0] = process_id.value
                return
            self._value += amount
            self._timestamp = 0.0
            mapped[position : position + 16] = _pack_two_doubles(self._value, 0.0)

    return _Value


def _write_with_a_kept_process_id() -> None:
    """Have this process's multiprocess values (created from now on) use :class:`_ProcessId` and the lean
    ``inc`` of :func:`_lean_values`; once a process."""
    global _process_id
    if _process_id is None:
        _process_id = _ProcessId()
        values.ValueClass = _lean_values(_process_id)


class _Counter(_KeptChildren, Counter):
    pass


class _Histogram(_KeptChildren, Histogram):
    pass


class Metrics:
    """The runtime's series, created once per app; ``render()`` is the body of ``/metrics``."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if self.multiprocess:
            _write_with_a_kept_process_id()
        self._providers: frozenset[str] = frozenset()
        self._models: frozenset[str] = frozenset()
        # In multiprocess mode the values go to files, and a registry of our own is only for rendering.
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry
        self.http_requests = _Counter(
            _PREFIX + "http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.chat_turns = _Counter(
            _PREFIX + "chat_turns_total",
            "Chat turns, by route, provider, model, persona source and outcome.",
            ["route", "provider", "model", "persona_source", "outcome"],
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            _PREFIX + "streams_in_flight",
            "Answers being streamed right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ttft = _Histogram(
            _PREFIX + "ttft_seconds",
            "Seconds to the first piece of an answer.",
            ["provider"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.turn_seconds = _Histogram(
            _PREFIX + "turn_seconds", "Seconds a whole turn took.", ["provider"], buckets=_BUCKETS, registry=registry
        )
        self.provider_errors = _Counter(
            _PREFIX + "provider_errors_total",
            "Provider failures, by provider and error code.",
            ["provider", "kind"],
            registry=registry,
        )
        self.tokens = _Counter(
            _PREFIX + "tokens_total",
            "Tokens, by provider and kind (input, output, cached).",
            ["provider", "kind"],
            registry=registry,
        )
        self.cache_requests = _Counter(
            _PREFIX + "cache_requests_total",
            "Cache look-ups, by layer and result.",
            ["layer", "result"],
            registry=registry,
        )
        self.rate_limited = _Counter(
            _PREFIX + "rate_limited_total",
            "Requests refused by a rate limit, by scope.",
            ["scope"],
            registry=registry,
        )

    def allow(self, *, providers: Iterable[str], models: Iterable[str]) -> None:
        """The provider and model names that may be label values: the configured ones."""
        self._providers = frozenset(providers)
        self._models = frozenset(models)

    def provider(self, name: str) -> str:
        """``name`` as a label value: itself when configured, else ``other``."""
        return name if name in self._providers else OTHER

    def model(self, name: str) -> str:
        """``name`` as a label value: itself when configured (a provider's default model), else ``other``."""
        return name if name in self._models else OTHER

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """This process is done: its live gauges stop counting."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
