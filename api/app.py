"""create_app: the one place the Litestar application is assembled."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from api.anthropic_compat import AnthropicController
from api.auth import ApiKeyMiddleware
from api.authoring import AuthoringController
from api.body import GuardedRequest
from api.chat import ChatController, ConversationController
from api.deps import dependencies
from api.errors import exception_handlers
from api.health import health, health_head, ready, ready_head
from api.keys import AdminController, KeyController
from api.openai_compat import OpenAIController
from api.openapi import StrictStructSchemaPlugin, document_errors
from api.personas import PersonaController
from api.playground import playground_router
from api.portability import PortabilityController
from providers import ProviderRegistry
from runtime.resources import open_resources
from runtime.settings import Settings

__all__ = ["app_from_env", "create_app"]


def create_app(settings: Settings, *, registry: ProviderRegistry | None = None) -> Litestar:
    """The application; ``registry`` replaces the built-in provider kinds (tests, embedding)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings, registry) as resources:
            app.state.resources = resources
            yield

    app = Litestar(
        route_handlers=[
            health,
            health_head,
            ready,
            ready_head,
            PersonaController,
            PortabilityController,
            AuthoringController,
            KeyController,
            AdminController,
            ChatController,
            ConversationController,
            OpenAIController,
            AnthropicController,
            playground_router(),
        ],
        dependencies=dependencies,
        request_class=GuardedRequest,
        exception_handlers=exception_handlers,
        middleware=[DefineMiddleware(ApiKeyMiddleware, exclude=["^/schema", "^/health", "^/ready", "^/playground"])],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="persona-runtime",
            version="0.1.0",
            description="Personas, prompt assembly and streaming chat for LLM clients.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        plugins=[StrictStructSchemaPlugin()],
        logging_config=None,
        debug=False,
    )
    document_errors(app)
    return app


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)
