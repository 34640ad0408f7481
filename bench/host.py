"""How quick the host is at the moment of a run: two gauges printed and recorded beside the figures.

The runtime's CPU per stream is part Python and part system calls (a `/v1` stream makes about a dozen reads
and writes). The same code measured 1.6 times apart between a morning and an evening here while a pure-Python loop
took the same time both times, so one gauge of each kind is taken:

* ``python_loop_ms``: 3 million additions in a Python loop at a module's top level;
* ``loopback_round_trip_us``: one byte sent over a loopback TCP connection and back, which is four system
  calls and the kernel's TCP path, in one thread (the median of five rounds of 20,000).

A change compared with its base on two days is comparable only if both gauges match; otherwise measure the base
alongside (bench/README.md, "Reading it").
"""

from __future__ import annotations

import socket
import statistics
import time

__all__ = ["gauges", "line"]


# Run at a module's top level, on global names, as the gauge quoted in bench/README's rows was (`python -c`):
# inside a function, on local names, the same loop takes about half as long.
_LOOP = compile("total = 0\nfor i in range(3_000_000):\n    total += i\n", "<python loop gauge>", "exec")


def _python_loop_ms() -> float:
    namespace: dict[str, int] = {}
    began = time.perf_counter()
    exec(_LOOP, namespace)  # our own constant code
    took = (time.perf_counter() - began) * 1000
    if namespace["total"] != 3_000_000 * 2_999_999 // 2:
        raise RuntimeError("the loop gauge did not run its loop")
    return took


def _loopback_round_trip_us(rounds: int = 20_000, repeats: int = 5) -> float:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    finally:
        listener.close()
    try:
        for sock in (near, far):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(rounds):
                near.send(b"x")
                far.recv(1)
                far.send(b"y")
                if near.recv(1) != b"y":
                    raise RuntimeError("the loopback gauge's connection closed")
            samples.append((time.perf_counter() - began) / rounds * 1e6)
        return statistics.median(samples)
    finally:
        near.close()
        far.close()


def gauges() -> dict[str, float]:
    """Both gauges, rounded: ``{"python_loop_ms": ..., "loopback_round_trip_us": ...}``."""
    return {
        "python_loop_ms": round(_python_loop_ms(), 1),
        "loopback_round_trip_us": round(_loopback_round_trip_us(), 2),
    }


def line(measured: dict[str, float]) -> str:
    return (
        f"host: a 3 M-step Python loop {measured['python_loop_ms']:.0f} ms, a loopback TCP round trip "
        f"{measured['loopback_round_trip_us']:.1f} µs"
    )


if __name__ == "__main__":
    print(line(gauges()))
