"""Instructions per request of the runtime, counted by callgrind: a repeatable A/B figure on a busy machine.

CPU time per stream moves by ±30 % between identical runs here when other work shares the cores; the number of
instructions the runtime's process executes per request moves by well under 1 %. ``python -m bench.instructions``
starts the fake provider and a scratch database as ``python -m bench`` does, then one runtime (``serve --workers
1``) under ``valgrind --tool=callgrind``, sends ``--warmup`` requests of each path, zeroes the counters, sends
``--requests`` more one after another, and reads the process's instruction count (user space only: the
kernel's work for the system calls is not in it). ``PROMETHEUS_MULTIPROC_DIR`` is set, so metrics are written
the way they are with ``--workers 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.client import chat_target, completions_target, run_sequential
from bench.fake_provider import StreamShape
from bench.services import ROOT, ServerProcess, create_account, fake_provider, runtime_server, scratch_database

__all__ = ["add_counting_arguments", "callgrind_wrapper", "count_turns", "main", "total_instructions", "turn_runtime"]

PATHS = ("completions", "chat", "completions-json")
_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def total_instructions(dump: bytes) -> int:
    """The instruction count (``Ir``) of a callgrind dump: its ``summary:`` (or ``totals:``) line."""
    found = _TOTALS.search(dump)
    if found is None:
        raise ValueError("no summary line in the callgrind dump")
    return int(found.group(1))


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def callgrind_wrapper(workdir: Path) -> list[str]:
    """The command that runs the runtime under callgrind, its dumps in ``workdir``. Instrumented only once
    counting is switched on (``--instr=on``): start-up (imports, migrations) runs at valgrind's plain speed."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.out.%p", "--instr-atstart=no"]


def turn_runtime(
    database_url: str,
    redis_url: str,
    provider_url: str,
    workdir: Path,
    redis_prefix: str,
    *,
    instructions: bool = False,
    root: Path = ROOT,
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """A turn benchmark's runtime (one worker, warnings only), of checkout ``root``, under callgrind when
    ``instructions``."""
    return runtime_server(
        database_url,
        redis_url,
        provider_url,
        log_level="warning",
        workdir=workdir,
        redis_prefix=redis_prefix,
        wrapper=callgrind_wrapper(workdir) if instructions else None,
        ready_within=600 if instructions else 60,
        root=root,
    )


def add_counting_arguments(parser: argparse.ArgumentParser) -> None:
    """A turn benchmark's ``--instructions``, ``--root`` and ``--dumps`` (read by ``count_turns``)."""
    parser.add_argument(
        "--instructions", action="store_true", help="count each kind's turns in instructions, under callgrind"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose runtime runs (this one by default)")
    parser.add_argument("--dumps", type=Path, help="with --instructions: keep each kind's callgrind dump here")


async def count_turns(
    pid: int,
    workdir: Path,
    dumps: Path | None,
    kinds: tuple[str, ...],
    turns: int,
    turn: Callable[[str], Awaitable[None]],
    statements: Callable[[], int] | None = None,
    reset: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Each kind's ``turns`` turns in instructions per turn, one kind after another (counts do not drift), after
    ten warm-up turns of each; the runtime (process ``pid``) runs under ``callgrind_wrapper(workdir)``. Prints a
    line a kind, with the statements per turn when ``statements`` (read after ``reset``) is given; keeps each
    kind's dump in ``dumps`` as ``callgrind.<kind>`` when given."""
    await asyncio.to_thread(_control, "--instr=on", str(pid))
    for kind in kinds * 10:
        await turn(kind)
    figures = {}
    for kind in kinds:
        await asyncio.to_thread(_control, "--zero", str(pid))
        if reset is not None:
            reset()
        for _ in range(turns):
            await turn(kind)
        await asyncio.sleep(0.5)  # the answers' saves, which run after each answer
        figures[kind] = await asyncio.to_thread(_read_kept, str(pid), workdir, dumps, kind) / turns
        counted = f", {statements() / turns:.2f} statements per turn" if statements is not None else ""
        print(f"{kind:>12}: {figures[kind] / 1e6:.3f} M instructions per turn{counted} ({turns} turns)")
    return figures


def _io_calls(pid: str) -> tuple[int, int]:
    """The process's read and write system calls so far (``syscr``, ``syscw`` of ``/proc/PID/io``; libuv
    reads and writes sockets with read/readv and write/writev, which these count)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def _dump_file(pid: str, workdir: Path) -> Path:
    """Dump the counters since the last zeroing; the dump's file."""
    for old in workdir.glob("callgrind.out.*"):
        old.unlink()
    _control("--dump", pid)
    return max(workdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)


def _read_kept(pid: str, workdir: Path, dumps: Path | None, kind: str) -> int:
    """Dump the counters since the last zeroing, keep the dump in ``dumps`` (when given), and read its total."""
    dump = _dump_file(pid, workdir)
    if dumps is not None:
        dumps.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, dumps / f"callgrind.{kind.replace(' ', '-')}")
    return total_instructions(dump.read_bytes())


def _dump(pid: str, workdir: Path) -> int:
    """Dump the counters since the last zeroing and read their total."""
    return total_instructions(_dump_file(pid, workdir).read_bytes())


async def _measure(args: argparse.Namespace) -> dict[str, float]:
    shape = StreamShape(chunks=args.chunks)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="persona-bench-ir-") as scratch, fake_provider(shape) as provider:
        workdir = Path(scratch)
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        async with scratch_database(args.database_url, workdir) as database_url:
            account = await create_account(database_url)
            wrapper = callgrind_wrapper(workdir)
            counting = not args.syscalls_only
            env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
            runtime = runtime_server(
                database_url,
                None,
                provider.url,
                log_level=args.server_log_level,
                workdir=workdir,
                workers=1,
                extra_env=env,
                wrapper=wrapper if counting else None,
                ready_within=600,
                root=args.root,
            )
            async with runtime as server:
                pid = str(server.popen.pid)
                url = server.url
                targets = {
                    "completions": completions_target(
                        "/v1", url + "/v1/chat/completions", account.headers, model="persona", system=None
                    ),
                    "chat": chat_target("/api/v1/chat", url + "/api/v1/chat", account.headers),
                    "completions-json": completions_target(
                        "/v1 non-stream",
                        url + "/v1/chat/completions",
                        account.headers,
                        model="persona",
                        system=None,
                        streamed=False,
                    ),
                }
                if counting:
                    await asyncio.to_thread(_control, "--instr=on", pid)
                for name in args.paths:
                    target = targets[name]
                    warm = await run_sequential(target, args.warmup, 0)
                    if any(s.error for s in warm.samples):
                        raise RuntimeError(f"{name}: {next(s.error for s in warm.samples if s.error)}")
                    if counting:
                        await asyncio.to_thread(_control, "--zero", pid)
                    reads, writes = _io_calls(pid)
                    run = await run_sequential(target, args.requests, 0)
                    reads_after, writes_after = _io_calls(pid)
                    errors = [s.error for s in run.samples if s.error]
                    if errors:
                        raise RuntimeError(f"{name}: {errors[0]}")
                    figures[name] = await asyncio.to_thread(_dump, pid, workdir) / args.requests if counting else 0
                    counted = f"{figures[name] / 1e6:.3f} M instructions per request, " if counting else ""
                    calls = (reads_after - reads) / args.requests, (writes_after - writes) / args.requests
                    note = " (valgrind's own included)" if counting else ""
                    print(f"{name}: {counted}{calls[0]:.2f} reads and {calls[1]:.2f} writes per request{note}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per path (default 200)")
    parser.add_argument("--warmup", type=int, default=30, help="requests per path before counting (default 30)")
    parser.add_argument(
        "--paths",
        type=lambda text: [p for p in text.split(",") if p],
        default=list(PATHS),
        help=f"comma-separated subset of {', '.join(PATHS)}",
    )
    parser.add_argument("--chunks", type=int, default=35)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--server-log-level", default="WARNING")
    parser.add_argument(
        "--syscalls-only",
        action="store_true",
        help="no valgrind: only the read and write system calls per request (valgrind adds its own)",
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the checkout whose runtime is measured (default this one)"
    )
    args = parser.parse_args(argv)
    if unknown := [p for p in args.paths if p not in PATHS]:
        parser.error(f"unknown paths: {', '.join(unknown)}")
    if not args.syscalls_only and (shutil.which("valgrind") is None or shutil.which("callgrind_control") is None):
        print("bench.instructions needs valgrind (callgrind and callgrind_control)", file=sys.stderr)
        return 2
    asyncio.run(_measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
