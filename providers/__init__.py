"""LLM providers behind one streaming protocol: OpenAI, Anthropic, echo and plugins."""

from core.events import Finish, ProviderEvent, TextDelta, ToolCallDelta, Usage
from providers.base import (
    NO_OPTIONS,
    ChatMessage,
    Image,
    Options,
    Provider,
    ProviderConfig,
    ProviderRequest,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolSpec,
    assemble_tool_calls,
    batches_of,
    refusal,
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
    "NO_OPTIONS",
    "ChatMessage",
    "EchoProvider",
    "Finish",
    "Image",
    "Options",
    "Provider",
    "ProviderConfig",
    "ProviderEvent",
    "ProviderFactory",
    "ProviderRegistry",
    "ProviderRequest",
    "ProviderSet",
    "ResponseFormat",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolSpec",
    "Usage",
    "assemble_tool_calls",
    "batches_of",
    "configs_from_env",
    "default_provider",
    "refusal",
    "text_of",
]
