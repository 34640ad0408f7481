"""LLM providers behind one streaming protocol: OpenAI, Anthropic, echo and plugins."""

from providers.base import (
    ChatMessage,
    Provider,
    ProviderConfig,
    ProviderRequest,
    ToolCall,
    ToolSpec,
    assemble_tool_calls,
)
from providers.echo import EchoProvider
from providers.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers.registry import (
    ENTRY_POINT_GROUP,
    ProviderFactory,
    ProviderRegistry,
    ProviderSet,
    configs_from_env,
    default_provider,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ChatMessage",
    "EchoProvider",
    "Finish",
    "Provider",
    "ProviderConfig",
    "ProviderEvent",
    "ProviderFactory",
    "ProviderRegistry",
    "ProviderRequest",
    "ProviderSet",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
    "assemble_tool_calls",
    "configs_from_env",
    "default_provider",
]
