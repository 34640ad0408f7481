"""Process trees: the master and its children, CPU and memory, and a change seen."""

from __future__ import annotations

import asyncio
import sys

from bench.processes import ProcessTree

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


async def test_tree_counts_children_and_sees_one_go() -> None:
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child_pid = int(await parent.stdout.readline())
        tree = ProcessTree(parent.pid)
        await tree.settle(1, within=10, quiet=0.2)
        assert [p.pid for p in tree.processes] == [parent.pid, child_pid]
        assert tree.cpu_seconds() >= 0
        memory = tree.memory()
        assert set(memory.rss) == {parent.pid, child_pid}
        assert memory.total > 0
        assert not tree.changed
        tree.processes[1].kill()
        for _ in range(500):  # the parent does not reap it: gone means a zombie here
            if tree.changed:
                break
            await asyncio.sleep(0.01)
        assert tree.changed
        # A process that has gone keeps the CPU time last read from it.
        assert tree.cpu_seconds() >= 0
    finally:
        parent.kill()
        await parent.wait()
