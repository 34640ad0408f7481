"""Figures from the samples: percentiles, throughput, CPU per stream, the added latency, and the printed tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.client import Run
from bench.cold_start import ColdResult
from bench.held_streams import HeldResult

__all__ = [
    "PhaseResult",
    "added_latency",
    "cold_table",
    "held_table",
    "percentile",
    "ratios",
    "summarize",
    "table",
    "unavailable",
]

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
    # CPU time (user + system) per stream of each party: the server's whole process tree, the fake
    # provider, and the benchmark's own client.
    cpu_ms_per_stream: dict[str, float]
    # New TCP connections the fake provider accepted per stream: ~0 when the caller keeps them alive.
    provider_connections_per_stream: float
    # Worker processes of the server under test (None for the direct path).
    workers: int | None = None
    # Connections the client had to open again because the server closed one, per stream.
    client_reconnects_per_stream: float = 0.0
    # The server's process tree was not the same at the end of the phase (a worker died or was replaced).
    tree_changed: bool = False
    first_error: str | None = None
    note: str | None = None
    # With more than one worker, each one's share of the workers' CPU in the phase (how evenly they took the load).
    worker_shares: list[float] | None = None


def summarize(
    path: str,
    load: str,
    clients: int,
    run: Run,
    cpu_seconds: dict[str, float],
    provider_connections: int,
    *,
    workers: int | None = None,
    tree_changed: bool = False,
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
        ttft_ms={f"p{p}": percentile([s.ttft * 1000 for s in good if s.ttft is not None], p) for p in PERCENTILES},
        total_ms={f"p{p}": percentile([s.total * 1000 for s in good], p) for p in PERCENTILES},
        streams_per_second=len(good) / run.wall if run.wall else math.nan,
        cpu_ms_per_stream={name: seconds * 1000 / streams for name, seconds in cpu_seconds.items()} if streams else {},
        provider_connections_per_stream=provider_connections / streams if streams else math.nan,
        workers=workers,
        client_reconnects_per_stream=run.connects / streams if streams else math.nan,
        tree_changed=tree_changed,
        first_error=errors[0].error if errors else None,
    )


def unavailable(path: str, load: str, clients: int, why: str, workers: int | None = None) -> PhaseResult:
    """A row for a server that could not be measured, saying why."""
    nan = {f"p{p}": math.nan for p in PERCENTILES}
    return PhaseResult(path, load, clients, 0, 0, nan, dict(nan), math.nan, {}, math.nan, workers, note=why)


def added_latency(
    results: list[PhaseResult], baseline: str, others: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """For each other path and load: its TTFT and total percentiles minus the direct path's (p50 and p95).

    ``others`` names another baseline for some paths (a non-streamed path against the non-streamed direct one).
    """
    others = others or {}
    baselines = {baseline, *others.values()}
    base = {(r.path, r.load): r for r in results if r.path in baselines}
    added = []
    for result in results:
        direct = base.get((others.get(result.path, baseline), result.load))
        if result.path in baselines or direct is None or not result.streams:
            continue
        added.append(
            {
                "path": result.path,
                "workers": result.workers,
                "load": result.load,
                "added_ttft_ms": {p: result.ttft_ms[p] - direct.ttft_ms[p] for p in ("p50", "p95")},
                "added_total_ms": {p: result.total_ms[p] - direct.total_ms[p] for p in ("p50", "p95")},
            }
        )
    return added


def ratios(results: list[PhaseResult], ours: str, theirs: str, clients: int) -> list[dict[str, Any]]:
    """streams/s of ``ours`` ÷ streams/s of ``theirs`` at ``clients`` clients, for each worker count of ours."""
    other = next((r for r in results if r.path == theirs and r.clients == clients and r.streams), None)
    if other is None or not other.streams_per_second:
        return []
    return [
        {
            "path": r.path,
            "workers": r.workers,
            "versus": theirs,
            "versus_workers": other.workers,
            "clients": clients,
            "streams_per_second": r.streams_per_second,
            "versus_streams_per_second": other.streams_per_second,
            "ratio": r.streams_per_second / other.streams_per_second,
        }
        for r in results
        if r.path == ours and r.clients == clients and r.streams
    ]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _workers(value: int | None) -> str:
    return "-" if value is None else str(value)


def table(results: list[PhaseResult], added: list[dict[str, Any]], compared: list[dict[str, Any]]) -> str:
    """The readable report: one row per path, worker count and load, then the added latency and the ratios."""
    header = (
        f"{'path':<28} {'w':>2} {'load':<11} {'ok/n':>9} "
        f"{'TTFT p50':>9} {'p95':>7} {'p99':>7}  {'total p50':>9} {'p95':>7} {'p99':>7}  "
        f"{'streams/s':>9}  {'CPU ms/stream: server':>21} {'provider':>8} {'client':>7}  {'conns/stream':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        cpu = r.cpu_ms_per_stream
        server_cpu = cpu.get("server")
        lines.append(
            f"{r.path:<28} {_workers(r.workers):>2} {r.load:<11} {f'{r.streams - r.errors}/{r.streams}':>9} "
            f"{_ms(r.ttft_ms['p50']):>9} {_ms(r.ttft_ms['p95']):>7} {_ms(r.ttft_ms['p99']):>7}  "
            f"{_ms(r.total_ms['p50']):>9} {_ms(r.total_ms['p95']):>7} {_ms(r.total_ms['p99']):>7}  "
            f"{_rate(r.streams_per_second):>9}  {'-' if server_cpu is None else _ms(server_cpu):>21} "
            f"{_ms(cpu.get('provider', math.nan)):>8} {_ms(cpu.get('client', math.nan)):>7}  "
            f"{_ms(r.provider_connections_per_stream):>12}"
        )
        if r.first_error:
            lines.append(f"    first error: {r.first_error}")
        if r.note:
            lines.append(f"    {r.note}")
        if r.worker_shares:
            shares = " / ".join(f"{share:.0%}" for share in r.worker_shares)
            lines.append(f"    the workers' shares of their CPU: {shares}")
        if r.tree_changed:
            lines.append("    the server's process tree changed during this phase (a worker exited or was replaced)")
    if added:
        lines += ["", "Added by the server (its path minus direct, same load; milliseconds):", ""]
        lines.append(
            f"{'path':<28} {'w':>2} {'load':<11} {'TTFT p50':>9} {'TTFT p95':>9} {'total p50':>10} {'total p95':>10}"
        )
        for a in added:
            ttft, total = a["added_ttft_ms"], a["added_total_ms"]
            lines.append(
                f"{a['path']:<28} {_workers(a['workers']):>2} {a['load']:<11} {_ms(ttft['p50']):>9} "
                f"{_ms(ttft['p95']):>9} {_ms(total['p50']):>10} {_ms(total['p95']):>10}"
            )
    for c in compared:
        lines.append(
            f"\n{c['path']} with {c['workers']} worker(s) ÷ {c['versus']} with {c['versus_workers']} worker(s), "
            f"streams/s at {c['clients']} clients: {c['streams_per_second']:.1f} / "
            f"{c['versus_streams_per_second']:.1f} = {c['ratio']:.2f}"
        )
    return "\n".join(lines)


def _per_process(values: dict[str, float], unit: str, digits: int = 1) -> str:
    total = sum(values.values())
    parts = ", ".join(f"{name} {value:.{digits}f}" for name, value in values.items())
    return f"{parts} (total {total:.{digits}f} {unit})" if len(values) > 1 else f"{total:.{digits}f} {unit}"


def _counts(counts: dict[str, int]) -> str:
    return "; ".join(f"{n} x {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def held_table(h: HeldResult, path: str) -> str:
    """The held-streams report of one runtime."""
    when = f" (all within {h.seconds_to_all_content:.1f} s)" if h.seconds_to_all_content is not None else ""
    lines = [
        f"Held streams: {h.streams} at once on {path}, runtime with {h.workers} worker(s); "
        "the provider holds each after its first content piece",
        f"  with first content             {h.content:>6}{when}",
        f"  headers only, no content       {h.headers_only:>6}",
        f"  stalled: no headers, no error  {h.stalled:>6}",
        f"  failed before the release      {h.failed:>6}",
        f"  connect failed                 {h.connect_failed:>6}",
        f"  held at the provider           {h.provider_held:>6}   (upstream streams the runtime opened)",
        f"  waited                         {h.wait_seconds:>6.1f} s",
        f"  idle RSS, MiB: {_per_process(h.idle_rss_mib, 'MiB')}",
        f"  open RSS, MiB: {_per_process(h.open_rss_mib, 'MiB')}",
    ]
    if h.streams_per_process:
        lines.append("  streams by process: " + ", ".join(f"{k} {v}" for k, v in h.streams_per_process.items()))
    if h.kib_per_stream is not None:
        by = ", ".join(f"{k} {v:.1f}" for k, v in h.kib_per_stream_by_process.items())
        lines.append(
            f"  KiB per open stream: {h.kib_per_stream:.1f}" + (f" (by process, per connection: {by})" if by else "")
        )
    lines.append(
        f"  after the release: {h.finished_ok} finished ok, {sum(h.finished_errors.values())} with an error, "
        f"{h.unfinished} unfinished"
    )
    if h.errors:
        lines.append(f"  errors before the release: {_counts(h.errors)}")
    if h.finished_errors:
        lines.append(f"  errors after the release: {_counts(h.finished_errors)}")
    if h.tree_changed:
        lines.append("  the runtime's process tree changed during the run (a worker exited or was replaced)")
    return "\n".join(lines)


def cold_table(c: ColdResult, shown: int = 12) -> str:
    """The cold-start report: statements the first requests caused, by kind, then the most frequent ones."""
    lines = [
        f"Cold start: {c.requests} concurrent first requests for model persona/{c.persona} on a fresh runtime "
        f"with {c.workers} worker, one API key",
        f"  answered ok             {c.ok:>5}/{c.requests}" + (f"   errors: {_counts(c.errors)}" if c.errors else ""),
        f"  persona selects         {c.persona_selects:>5}",
        f"  API-key lookups         {c.api_key_lookups:>5}",
        f"  preference selects      {c.preference_selects:>5}",
        f"  pool connection resets  {c.pool_resets:>5}   (asyncpg's, one per connection back to the pool)",
        f"  other statements        {c.other_statements:>5}",
    ]
    if c.redis_keys_deleted is not None:
        lines.append(f"  Redis keys deleted under the run's prefix before the start: {c.redis_keys_deleted}")
    if c.statements:
        lines.append("  statements executed (count, SQL):")
        for sql, n in c.statements[:shown]:
            lines.append(f"    {n:>5}  {sql if len(sql) <= 110 else sql[:107] + '...'}")
        if len(c.statements) > shown:
            lines.append(f"    ... and {len(c.statements) - shown} more kinds (all in the JSON)")
    return "\n".join(lines)
