"""Figures from the samples: percentiles, throughput, CPU per stream, the added latency, a table and JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.client import Run

__all__ = ["PhaseResult", "added_latency", "percentile", "summarize", "table"]

PERCENTILES = (50, 95, 99)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on unsorted input."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class PhaseResult:
    """One path under one load: latency percentiles in milliseconds, streams per second, CPU per stream."""

    path: str
    load: str
    clients: int
    streams: int
    errors: int
    ttft_ms: dict[str, float]
    total_ms: dict[str, float]
    streams_per_second: float
    cpu_ms_per_stream: dict[str, float]
    # New TCP connections the fake provider accepted per stream: ~0 when the caller keeps them alive.
    provider_connections_per_stream: float
    first_error: str | None = None


def summarize(
    path: str, load: str, clients: int, run: Run, cpu_seconds: dict[str, float], provider_connections: int
) -> PhaseResult:
    good = [s for s in run.samples if s.error is None and s.ttft is not None]
    errors = [s for s in run.samples if s.error is not None]
    streams = len(run.samples)
    return PhaseResult(
        path=path,
        load=load,
        clients=clients,
        streams=streams,
        errors=len(errors),
        ttft_ms={f"p{p}": percentile([s.ttft * 1000 for s in good if s.ttft], p) for p in PERCENTILES},
        total_ms={f"p{p}": percentile([s.total * 1000 for s in good], p) for p in PERCENTILES},
        streams_per_second=len(good) / run.wall if run.wall else math.nan,
        cpu_ms_per_stream={name: seconds * 1000 / streams for name, seconds in cpu_seconds.items()} if streams else {},
        provider_connections_per_stream=provider_connections / streams if streams else math.nan,
        first_error=errors[0].error if errors else None,
    )


def added_latency(results: list[PhaseResult], baseline: str) -> list[dict[str, Any]]:
    """For each runtime path and load: its TTFT percentiles minus the direct path's (p50 and p95)."""
    base = {r.load: r for r in results if r.path == baseline}
    added = []
    for result in results:
        direct = base.get(result.load)
        if result.path == baseline or direct is None:
            continue
        added.append(
            {
                "path": result.path,
                "load": result.load,
                "added_ttft_ms": {p: result.ttft_ms[p] - direct.ttft_ms[p] for p in ("p50", "p95")},
                "added_total_ms": {p: result.total_ms[p] - direct.total_ms[p] for p in ("p50", "p95")},
            }
        )
    return added


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def table(results: list[PhaseResult], added: list[dict[str, Any]]) -> str:
    """The readable report: one row per path and load, then the added latency."""
    header = (
        f"{'path':<28} {'load':<11} {'ok/n':>9} "
        f"{'TTFT p50':>9} {'p95':>7} {'p99':>7}  {'total p50':>9} {'p95':>7} {'p99':>7}  "
        f"{'streams/s':>9}  {'CPU ms/stream: runtime':>22} {'provider':>8} {'client':>7}  {'conns/stream':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        cpu = r.cpu_ms_per_stream
        runtime_cpu = cpu.get("runtime")
        lines.append(
            f"{r.path:<28} {r.load:<11} {f'{r.streams - r.errors}/{r.streams}':>9} "
            f"{_ms(r.ttft_ms['p50']):>9} {_ms(r.ttft_ms['p95']):>7} {_ms(r.ttft_ms['p99']):>7}  "
            f"{_ms(r.total_ms['p50']):>9} {_ms(r.total_ms['p95']):>7} {_ms(r.total_ms['p99']):>7}  "
            f"{r.streams_per_second:>9.1f}  {'-' if runtime_cpu is None else _ms(runtime_cpu):>22} "
            f"{_ms(cpu.get('provider', math.nan)):>8} {_ms(cpu.get('client', math.nan)):>7}  "
            f"{r.provider_connections_per_stream:>12.2f}"
        )
        if r.first_error:
            lines.append(f"    first error: {r.first_error}")
    lines += ["", "Added by the runtime (runtime path minus direct, same load; milliseconds):", ""]
    lines.append(f"{'path':<28} {'load':<11} {'TTFT p50':>9} {'TTFT p95':>9} {'total p50':>10} {'total p95':>10}")
    for a in added:
        ttft, total = a["added_ttft_ms"], a["added_total_ms"]
        lines.append(
            f"{a['path']:<28} {a['load']:<11} {_ms(ttft['p50']):>9} {_ms(ttft['p95']):>9} "
            f"{_ms(total['p50']):>10} {_ms(total['p95']):>10}"
        )
    return "\n".join(lines)
