"""The host gauges printed beside every run (bench/host.py) measure what they say."""

from __future__ import annotations

from bench import host


def test_the_gauges_run_their_loop_and_their_round_trips_and_are_printed():
    measured = host.gauges()
    assert set(measured) == {"python_loop_ms", "loopback_round_trip_us"}
    # A loop of 3 million steps takes tens of milliseconds at least, and a round trip over TCP some microseconds.
    assert 10 < measured["python_loop_ms"] < 60_000
    assert 0.5 < measured["loopback_round_trip_us"] < 10_000
    assert host.line(measured).startswith("host: a 3 M-step Python loop ")
