"""Tests of the benchmark's own machinery (not of the runtime's speed)."""
