"""Portkey's AI Gateway, for comparison: installed once from npm into a cached folder of its own, run by Node
against the fake provider."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bench.services import ServerProcess, free_port, run_install_step, spawn_command, wait_ready

__all__ = ["PACKAGE", "VERSION", "PortkeyUnavailable", "headers", "install", "portkey_gateway"]

VERSION = "1.15.2"
PACKAGE = "@portkey-ai/gateway"
# Portkey passes the model name through to the provider it is told to use (a header), so any name works.
MODEL = "gpt-4o-mini"
INSTALL_TIMEOUT = 900.0
_READY_MARK = ".bench-installed"
_ENTRY = Path("node_modules") / "@portkey-ai" / "gateway" / "build" / "start-server.js"
# Loaded before the gateway (``node --import``): the gateway calls ``serve({port})``, which listens on every
# interface; this makes every TCP listen of the process bind to loopback only.
_LOOPBACK = """\
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number") {
    const hasHost = typeof args[1] === "string" || args[1] === undefined || args[1] === null;
    args.splice(1, hasHost ? 1 : 0, "127.0.0.1");
  } else if (args[0] && typeof args[0] === "object" && args[0].path === undefined) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
"""


class PortkeyUnavailable(Exception):
    """Portkey could not be installed or started; the message says why."""


def cache_dir(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "persona-runtime-bench" / f"portkey-{version}"


def install_command(folder: Path, version: str) -> list[str]:
    """npm's install of the pinned gateway into ``folder`` (its own node_modules; no audit, no funding notes)."""
    return ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), f"{PACKAGE}@{version}"]


def _install_sync(version: str) -> Path:
    folder = cache_dir(version)
    entry = folder / _ENTRY
    if (folder / _READY_MARK).exists() and entry.exists():
        return folder
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PortkeyUnavailable("node and npm are needed to run Portkey's gateway")
    shutil.rmtree(folder, ignore_errors=True)  # a half-made folder from an interrupted install
    folder.mkdir(parents=True)
    log = folder.parent / f"portkey-{version}-install.log"
    print(f"bench: installing {PACKAGE}@{version} into {folder} (once; log {log}) ...", file=sys.stderr, flush=True)
    name = f"npm install {PACKAGE}@{version}"
    with log.open("wb") as sink:
        step = install_command(folder, version)
        run_install_step(step, log, sink, timeout=INSTALL_TIMEOUT, unavailable=PortkeyUnavailable, name=name)
    if not entry.exists():
        raise PortkeyUnavailable(f"`{name}` left no {_ENTRY}: see {log}")
    (folder / _READY_MARK).write_text(version + "\n")
    return folder


async def install(version: str = VERSION) -> Path:
    """The cached folder holding the gateway, installing it first if it is not there yet."""
    return await asyncio.to_thread(_install_sync, version)


def headers(provider_url: str) -> dict[str, str]:
    """The request headers that route a call through the gateway to the fake provider as OpenAI."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": provider_url + "/v1",
        "Authorization": "Bearer sk-bench-fake",
    }


def command(folder: Path, workdir: Path, port: int) -> list[str]:
    """Node with the loopback preload, then the gateway on ``port``, headless (no console UI, no log stream)."""
    preload = workdir / "portkey-loopback.mjs"
    preload.write_text(_LOOPBACK)
    return ["node", "--import", preload.as_uri(), str(folder / _ENTRY), f"--port={port}", "--headless"]


def _env(workdir: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"NODE_ENV": "production", "NO_PROXY": "127.0.0.1,localhost", "TMPDIR": str(workdir)})
    return env


@contextlib.asynccontextmanager
async def portkey_gateway(folder: Path, workdir: Path) -> AsyncIterator[ServerProcess]:
    """The gateway (one Node process) on a free loopback port, ready to answer."""
    port = free_port()
    log = workdir / f"portkey-{port}.log"
    with log.open("wb") as sink:
        popen = spawn_command(
            command(folder, workdir, port), _env(workdir), cwd=workdir, stdout=sink, stderr=subprocess.STDOUT
        )
    server = ServerProcess(f"Portkey {folder.name}", popen, f"http://127.0.0.1:{port}", log, 1)
    try:
        try:
            await wait_ready(server, "/", within=60)
        except RuntimeError as exc:
            raise PortkeyUnavailable(str(exc).splitlines()[0] + f" (log: {log})") from None
        await server.tree.settle(1)
        yield server
    finally:
        await asyncio.to_thread(server.stop)
