"""Benchmark of persona-runtime's streaming paths against a fast local fake provider (reports figures only)."""
