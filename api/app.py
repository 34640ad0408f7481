"""create_app: the one place the Litestar application is assembled."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from litestar import Litestar
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig

from api.anthropic_compat import AnthropicController
from api.assets import schema_viewers, vendor_router
from api.auth import ApiKeyMiddleware
from api.authoring import AuthoringController
from api.avatars import AvatarController
from api.body import GuardedRequest
from api.chat import ChatController, ConversationController, MessageController
from api.deps import dependencies
from api.errors import exception_handlers
from api.health import health, health_head, metrics, ready, ready_head
from api.keys import AdminController, AdminKeyController, KeyController
from api.memories import MemoryController
from api.openai_compat import OpenAIController
from api.openapi import StrictStructSchemaPlugin, document_errors
from api.path_params import path_params_guard
from api.personas import PersonaController
from api.playground import playground_router
from api.portability import PortabilityController
from api.releases import ReleaseController
from api.request_ids import RequestIdMiddleware
from api.responses import ResponsesController
from api.trace_context import TraceContextMiddleware
from api.turns import FeedbackController, StatsController, UsageController
from core.logs import configure_logging
from providers import ProviderRegistry
from runtime.server.resources import Resources, open_resources
from runtime.server.serving import FrontLimits, configure_front
from runtime.server.settings import Settings

__all__ = ["app_from_env", "create_app"]


def create_app(
    settings: Settings,
    *,
    registry: ProviderRegistry | None = None,
    clock: Callable[[], float] = time.time,
    settle: bool = False,
) -> Litestar:
    """The application; ``registry`` replaces the built-in provider kinds (tests, embedding), ``clock`` the
    wall time the rate limits' windows are read from (tests). ``settle``: the app is its process's only one
    (``serve``), which keeps what it opened at start for its whole life (:func:`_settle`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings, registry, clock=clock) as resources:
            app.state.resources = resources
            if settle:
                _settle()
            with _notified_of_sigterm(resources):
                yield

    app = Litestar(
        route_handlers=[
            health,
            health_head,
            ready,
            ready_head,
            *([metrics] if settings.metrics else []),
            PersonaController,
            PortabilityController,
            AvatarController,
            AuthoringController,
            ReleaseController,
            KeyController,
            AdminController,
            AdminKeyController,
            ChatController,
            ConversationController,
            MessageController,
            MemoryController,
            OpenAIController,
            AnthropicController,
            ResponsesController,
            FeedbackController,
            StatsController,
            UsageController,
            playground_router(),
            vendor_router(),
        ],
        dependencies=dependencies,
        request_class=GuardedRequest,
        exception_handlers=exception_handlers,
        middleware=[
            path_params_guard,
            DefineMiddleware(
                ApiKeyMiddleware, exclude=["^/schema", "^/health", "^/ready", "^/metrics", "^/playground", "^/vendor"]
            ),
        ],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="persona-runtime",
            version="0.1.0",
            description="Personas, prompt assembly and streaming chat for LLM clients.",
            path="/schema",
            render_plugins=schema_viewers(),
        ),
        plugins=[StrictStructSchemaPlugin()],
        logging_config=None,
        debug=False,
    )
    # Around everything Litestar does, error answers and unknown paths included.
    if settings.traces_endpoint:
        app.asgi_handler = TraceContextMiddleware(app.asgi_handler)
    app.asgi_handler = RequestIdMiddleware(app.asgi_handler, count=_counter(app))
    document_errors(app)
    return app


def _counter(app: Litestar) -> Callable[[str, str, int], None]:
    """Counts each answer in the running app's metrics (none before its resources are open)."""

    def count(route: str, method: str, status: int) -> None:
        resources = getattr(app.state, "resources", None)
        if resources is not None:
            resources.metrics.http_requests.labels(route, method, str(status)).inc()

    return count


@contextlib.contextmanager
def _notified_of_sigterm(resources: Resources) -> Iterator[None]:
    """Tell the resources when SIGTERM arrives, then let the server's own handler stop it as usual.

    The server (uvicorn) installed its handler before the app started; this one runs first and hands over.
    Without such a handler (an app run by a test, or off the main thread) nothing is installed.
    """
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):  # no server of ours listening for SIGTERM: leave the process's handling alone
        yield
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(resources.begin_shutdown)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    configure_front(FrontLimits(head_timeout=settings.header_timeout_seconds))
    return create_app(settings, settle=True)


def _settle() -> None:
    """Take what the process holds once started (modules, tokenizers' tables, the app) out of the cyclic
    garbage collector's way: collected once, then frozen (``gc.freeze``), so later collections no longer
    walk its ~157,000 objects. Those walks were a seventh of a turn's instructions for a persona with a 500-entry
    lorebook (``python -m bench.lore --instructions``: 4.91 M -> 4.22 M a turn), and each full collection
    paused the process for 35-45 ms.
    Nothing frozen is ever freed, which is why only a served process does it: everything it holds at this
    point lives until it exits."""
    gc.collect()
    gc.freeze()
