"""Held-streams mode end to end, with the fake provider as the server (it holds its own streams)."""

from __future__ import annotations

from bench.client import completions_target
from bench.fake_provider import StreamShape
from bench.held_streams import held_streams
from bench.services import fake_provider


async def test_every_stream_is_held_then_released() -> None:
    with fake_provider(StreamShape(chunks=4)) as provider:
        await provider.tree.settle(1, within=10, quiet=0.2)
        target = completions_target("held", provider.url + "/v1/chat/completions", {}, model="m", system=None)
        result = await held_streams(provider, provider.url, target, 60, wait=60, finish_within=60)
    assert result.content == 60
    assert (result.headers_only, result.stalled, result.failed, result.connect_failed) == (0, 0, 0, 0)
    assert result.provider_held == 60
    assert result.seconds_to_all_content is not None
    # Here the server is the provider, so the benchmark's control connection to it is counted too.
    assert set(result.streams_per_process) == {"process"}
    assert result.streams_per_process["process"] in (60, 61)
    assert result.kib_per_stream is not None
    assert set(result.idle_rss_mib) == {"process"}
    assert (result.finished_ok, result.unfinished, result.finished_errors) == (60, 0, {})
