"""A server's process tree (master and worker children): its CPU time and memory, read with psutil."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil

__all__ = ["ProcessTree", "TreeMemory"]


@dataclass(frozen=True)
class TreeMemory:
    """Resident memory of every process in the tree, in bytes, by pid; the master's pid first."""

    rss: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.rss.values())


class ProcessTree:
    """The master process and the children it had once it was up, fixed at ``settle()``.

    CPU time is the user + system time of each process of that set, summed. A process of the set that has
    gone keeps the last time read from it, and ``changed`` says the tree is no longer the one measured.
    """

    def __init__(self, pid: int) -> None:
        self.master = psutil.Process(pid)
        self.processes: list[psutil.Process] = [self.master]
        self._last_cpu: dict[int, float] = {}

    @property
    def workers(self) -> list[psutil.Process]:
        """The children of the master that serve requests (uvicorn's spawned workers), or the master alone."""
        spawned = [p for p in self.processes[1:] if _is_worker(p)]
        return spawned or [self.master]

    async def settle(self, workers: int, within: float = 60.0, quiet: float = 0.5) -> None:
        """Wait until ``workers`` worker processes exist (when more than one) and the tree's CPU is quiet, then
        fix the set of processes. Bounded by ``within`` seconds; the set is fixed at the end either way."""
        deadline = time.monotonic() + within
        while workers > 1 and time.monotonic() < deadline:
            children = self._children()
            if sum(1 for p in children if _is_worker(p)) >= workers:
                break
            await asyncio.sleep(0.1)
        self.processes = [self.master, *self._children()]
        # Start-up (imports, migrations, pools) may still be running in a worker: wait for the CPU to go quiet.
        previous = self.cpu_seconds()
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet)
            now = self.cpu_seconds()
            if now - previous < 0.02 * quiet:
                break
            previous = now
        self.processes = [self.master, *self._children()]

    def _children(self) -> list[psutil.Process]:
        try:
            return list(self.master.children(recursive=True))
        except psutil.Error:
            return []

    @property
    def changed(self) -> bool:
        """Whether a process of the set has gone or a new one has appeared since ``settle()``."""
        now = {p.pid for p in self._children()}
        now.add(self.master.pid)
        return now != {p.pid for p in self.processes} or not all(_alive(p) for p in self.processes)

    def cpu_seconds(self) -> float:
        return sum(self._cpu_of(process) for process in self.processes)

    def worker_cpu_seconds(self) -> list[float]:
        """Each worker's user + system time, in the order of :attr:`workers`."""
        return [self._cpu_of(process) for process in self.workers]

    def _cpu_of(self, process: psutil.Process) -> float:
        """User + system time of ``process``: the last read of it once it has gone."""
        try:
            times = process.cpu_times()
            self._last_cpu[process.pid] = times.user + times.system
        except psutil.Error:
            pass
        return self._last_cpu.get(process.pid, 0.0)

    def memory(self) -> TreeMemory:
        rss: dict[int, int] = {}
        for process in self.processes:
            try:
                rss[process.pid] = process.memory_info().rss
            except psutil.Error:
                rss[process.pid] = 0
        return TreeMemory(rss)


def _alive(process: psutil.Process) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_worker(process: psutil.Process) -> bool:
    try:
        return any("spawn_main" in part for part in process.cmdline())
    except psutil.Error:
        return False
