"""The added latency of a non-streamed path is taken against the non-streamed direct path; callgrind's total; the
workers' shares in the table."""

from __future__ import annotations

import math

from bench.instructions import total_instructions
from bench.report import PhaseResult, added_latency, table


def _result(path: str, ttft: float) -> PhaseResult:
    ms = {"p50": ttft, "p95": ttft * 2, "p99": ttft * 3}
    return PhaseResult(path, "1 client", 1, 10, 0, ms, dict(ms), 100.0, {"server": 0.5}, 0.0, workers=1)


def test_each_path_is_set_against_its_own_baseline() -> None:
    results = [
        _result("direct", 0.1),
        _result("direct json", 0.05),
        _result("ours", 0.6),
        _result("ours json", 0.55),
    ]
    added = {
        a["path"]: a["added_ttft_ms"]["p50"] for a in added_latency(results, "direct", {"ours json": "direct json"})
    }
    assert set(added) == {"ours", "ours json"}
    assert math.isclose(added["ours"], 0.5)
    assert math.isclose(added["ours json"], 0.5)


def test_the_total_of_a_callgrind_dump() -> None:
    dump = b"# callgrind format\nversion: 1\nevents: Ir\nsummary: 123456789\n\nfn=main\n1 5\ntotals: 123456789\n"
    assert total_instructions(dump) == 123456789


def test_the_table_shows_how_the_workers_shared_the_load() -> None:
    shared = _result("ours", 0.6)
    shared.worker_shares = [0.42, 0.58]
    alone = _result("direct", 0.1)
    printed = table([alone, shared], [], [])
    assert "the workers' shares of their CPU: 42% / 58%" in printed
    assert printed.count("shares of their CPU") == 1
