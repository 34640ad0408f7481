"""LiteLLM's proxy, for comparison: installed once into a cached venv of its own, run against the fake provider."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from bench.services import ServerProcess, free_port, run_install_step, spawn, wait_ready

__all__ = ["MODEL", "VERSION", "LiteLLMUnavailable", "install", "litellm_proxy"]

# The version the issue compared against.
VERSION = "1.108.7"
# The model name the proxy serves; it routes to the fake provider as ``openai/gpt-4o-mini``.
MODEL = "bench-model"
INSTALL_TIMEOUT = 1200.0
_READY_MARK = ".bench-installed"


class LiteLLMUnavailable(Exception):
    """LiteLLM could not be installed or started; the message says why."""


def cache_dir(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "persona-runtime-bench" / f"litellm-{version}"


def _install_sync(version: str) -> Path:
    venv = cache_dir(version)
    python = venv / "bin" / "python"
    if (venv / _READY_MARK).exists() and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted install
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"litellm-{version}-install.log"
    print(f"bench: installing litellm[proxy]=={version} into {venv} (once; log {log}) ...", file=sys.stderr, flush=True)
    steps = [
        ["python3", "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"],
    ]
    with log.open("wb") as sink:
        for step in steps:
            name = " ".join(step[-4:])
            run_install_step(step, log, sink, timeout=INSTALL_TIMEOUT, unavailable=LiteLLMUnavailable, name=name)
    (venv / _READY_MARK).write_text(version + "\n")
    return python


async def install(version: str = VERSION) -> Path:
    """The cached venv's Python, installing LiteLLM first if it is not there yet."""
    return await asyncio.to_thread(_install_sync, version)


def _config(provider_url: str, master_key: str) -> dict[str, object]:
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_base": provider_url + "/v1",
                    "api_key": "sk-bench-fake",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False},
        "general_settings": {"master_key": master_key, "disable_spend_logs": True},
    }


def _env(workdir: Path) -> dict[str, str]:
    """A clean environment: no database, no telemetry, no fetching the model price list from the network."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
            "DISABLE_ADMIN_UI": "True",
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(workdir),
        }
    )
    return env


@contextlib.asynccontextmanager
async def litellm_proxy(
    python: Path, provider_url: str, workdir: Path, *, workers: int = 2
) -> AsyncIterator[tuple[ServerProcess, str]]:
    """The LiteLLM proxy (uvicorn, ``workers`` processes) on a free loopback port, and its master key."""
    master_key = "sk-bench-" + secrets.token_hex(12)
    config = workdir / "litellm.yaml"
    # YAML is a superset of JSON: the config is written as JSON.
    config.write_bytes(msgspec.json.encode(_config(provider_url, master_key)))
    port = free_port()
    log = workdir / f"litellm-{port}.log"
    args = ["-m", "litellm.proxy.proxy_cli", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--num_workers", str(workers)]
    with log.open("wb") as sink:
        # Run from the scratch directory: from the repository root, ``-m`` would put the runtime's packages
        # (``api``, ``core``, ...) on LiteLLM's import path.
        popen = spawn(args, _env(workdir), python=str(python), cwd=workdir, stdout=sink, stderr=subprocess.STDOUT)
    server = ServerProcess(f"LiteLLM {python.parent.parent.name}", popen, f"http://127.0.0.1:{port}", log, workers)
    try:
        try:
            await wait_ready(server, "/health/liveliness", within=180)
        except RuntimeError as exc:
            raise LiteLLMUnavailable(str(exc).splitlines()[0] + f" (log: {log})") from None
        await server.tree.settle(workers)
        yield server, master_key
    finally:
        await asyncio.to_thread(server.stop)
