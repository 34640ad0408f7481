"""LLM providers behind one streaming protocol: OpenAI, Anthropic, echo and plugins."""

from core.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers.base import (
    ChatMessage,
    Image,
    Provider,
    ProviderConfig,
    ProviderRequest,
    ToolCall,
    ToolSpec,
    assemble_tool_calls,
    batches_of,
    text_of,
)
from providers.echo import EchoProvider
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
    "Image",
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
    "batches_of",
    "configs_from_env",
    "default_provider",
    "text_of",
]
