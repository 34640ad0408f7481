"""Provider kinds by name, the providers configured from the environment, and the default choice."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

import msgspec

from core.errors import BadRequest
from providers._http import UnsupportedProxy, proxy_for
from providers.base import Provider, ProviderConfig

__all__ = [
    "BUILTIN_BASE_URLS",
    "BUILTIN_DEFAULT_MODELS",
    "ENTRY_POINT_GROUP",
    "ProviderFactory",
    "ProviderRegistry",
    "ProviderSet",
    "configs_from_env",
    "default_provider",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "persona_runtime.providers"
BUILTIN_DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "echo": "echo-1"}
# Where the built-in HTTP kinds go without a base URL (their adapters' DEFAULT_BASE_URL).
BUILTIN_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
PLACEHOLDER_KEY = "unused"  # local OpenAI-compatible servers want some key but check none

ProviderFactory: TypeAlias = Callable[[ProviderConfig], Provider]


# Built-ins import their SDK only when used, so an echo-only runtime never loads openai or anthropic.
def _openai(config: ProviderConfig) -> Provider:
    from providers.openai import OpenAIProvider

    return OpenAIProvider(config)


def _anthropic(config: ProviderConfig) -> Provider:
    from providers.anthropic import AnthropicProvider

    return AnthropicProvider(config)


def _echo(config: ProviderConfig) -> Provider:
    from providers.echo import EchoProvider

    return EchoProvider(config)


class ProviderRegistry:
    """Maps a provider ``kind`` to the factory that builds it from a ``ProviderConfig``.

    Built-in kinds register exactly as plugins do; plugins are callables published under the
    ``persona_runtime.providers`` entry-point group, the entry point's name being the kind.
    """

    def __init__(self) -> None:
        self._factories: dict[str, ProviderFactory] = {}

    @classmethod
    def with_builtins(cls, *, plugins: bool = True) -> ProviderRegistry:
        registry = cls()
        registry.register("openai", _openai)
        registry.register("anthropic", _anthropic)
        registry.register("echo", _echo)
        if plugins:
            registry.load_entry_points()
        return registry

    def register(self, kind: str, factory: ProviderFactory, *, replace: bool = False) -> None:
        if kind in self._factories and not replace:
            raise ValueError(f"provider kind {kind!r} is already registered")
        self._factories[kind] = factory

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every factory published in ``group``; returns the kinds added.

        A plugin that fails to load or reuses a taken kind is logged and skipped: one broken
        package must not keep the runtime from starting.
        """
        added: list[str] = []
        for entry_point in importlib.metadata.entry_points(group=group):
            if entry_point.name in self._factories:
                log.warning("provider plugin %s ignored: kind %r is taken", entry_point.value, entry_point.name)
                continue
            try:
                factory = entry_point.load()
            except Exception:
                log.exception("provider plugin %s failed to load", entry_point.value)
                continue
            if not callable(factory):
                log.warning("provider plugin %s ignored: it is not callable", entry_point.value)
                continue
            self._factories[entry_point.name] = factory
            added.append(entry_point.name)
        return added

    def kinds(self) -> list[str]:
        return sorted(self._factories)

    def create(self, config: ProviderConfig) -> Provider:
        factory = self._factories.get(config.kind)
        if factory is None:
            raise BadRequest(
                f"Provider {config.name!r} has unknown kind {config.kind!r}; known kinds: {', '.join(self.kinds())}.",
                field="kind",
            )
        return factory(config)

    def build(self, configs: Iterable[ProviderConfig]) -> ProviderSet:
        return ProviderSet({config.name: self.create(config) for config in configs})


class ProviderSet:
    """The instantiated providers of one runtime, by name; closed together on shutdown."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    def get(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            raise BadRequest(
                f"Unknown provider {name!r}. Configured providers: {', '.join(self.names())}. "
                "Configure another with its environment variables (e.g. OPENAI_API_KEY).",
                field="provider",
            )
        return provider

    def names(self) -> list[str]:
        return list(self._providers)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __len__(self) -> int:
        return len(self._providers)

    def interrupt(self, exc: BaseException) -> None:
        """End the answers under way with ``exc``, on every provider that can (the HTTP adapters can)."""
        for provider in self._providers.values():
            interrupt = getattr(provider, "interrupt", None)
            if interrupt is not None:
                interrupt(exc)

    async def aclose(self) -> None:
        results = await asyncio.gather(*(p.aclose() for p in self._providers.values()), return_exceptions=True)
        for name, result in zip(self._providers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing provider %s failed: %r", name, result)


def _get(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key, "").strip()
    return value or None


_EXTRA_SUFFIXES = ("_BASE_URL", "_API_KEY", "_MODEL", "_KIND")


def _extra_names(env: Mapping[str, str]) -> list[str]:
    names: set[str] = set()
    for key in env:
        if not key.startswith("PROVIDER_"):
            continue
        for suffix in _EXTRA_SUFFIXES:
            if key.endswith(suffix) and len(key) > len("PROVIDER_") + len(suffix):
                names.add(key[len("PROVIDER_") : -len(suffix)])
                break
    return sorted(names)


def configs_from_env(env: Mapping[str, str]) -> list[ProviderConfig]:
    """The providers the environment configures, in order: openai, anthropic, extras, echo.

    ``OPENAI_API_KEY`` and/or ``OPENAI_BASE_URL`` configure ``openai`` (a URL alone means a local
    server that needs no key); ``ANTHROPIC_*`` likewise ``anthropic``. Each
    ``PROVIDER_<NAME>_BASE_URL`` adds an OpenAI-compatible provider ``<name>``, with optional
    ``_API_KEY``, ``_MODEL`` and ``_KIND``. ``echo`` is always there. ``DEFAULT_MODEL`` becomes
    the default model of the default provider. A proxy variable the built-in adapters cannot use (SOCKS)
    is refused here, naming it.
    """
    configs: list[ProviderConfig] = []
    for name in ("openai", "anthropic"):
        key, url = _get(env, f"{name.upper()}_API_KEY"), _get(env, f"{name.upper()}_BASE_URL")
        if key or url:
            configs.append(
                ProviderConfig(
                    name=name,
                    kind=name,
                    api_key=key or PLACEHOLDER_KEY,
                    base_url=url,
                    default_model=BUILTIN_DEFAULT_MODELS[name],
                )
            )
    for raw in _extra_names(env):
        name, prefix = raw.lower(), f"PROVIDER_{raw}"
        url = _get(env, f"{prefix}_BASE_URL")
        if url is None:
            raise BadRequest(
                f"{prefix}_BASE_URL is required to configure provider {name!r}.", field=f"{prefix}_BASE_URL"
            )
        if name in BUILTIN_DEFAULT_MODELS:
            raise BadRequest(
                f"Provider name {name!r} is built in; pick another name than {prefix}_*.",
                field=f"{prefix}_BASE_URL",
            )
        configs.append(
            ProviderConfig(
                name=name,
                kind=(_get(env, f"{prefix}_KIND") or "openai").lower(),
                api_key=_get(env, f"{prefix}_API_KEY") or PLACEHOLDER_KEY,
                base_url=url,
                default_model=_get(env, f"{prefix}_MODEL"),
            )
        )
    configs.append(ProviderConfig(name="echo", kind="echo", default_model=BUILTIN_DEFAULT_MODELS["echo"]))
    for config in configs:
        _check_proxy(config, env)

    model = _get(env, "DEFAULT_MODEL")
    if model is not None:
        chosen = default_provider(configs, env)
        configs = [msgspec.structs.replace(c, default_model=model) if c.name == chosen else c for c in configs]
    return configs


def _check_proxy(config: ProviderConfig, env: Mapping[str, str]) -> None:
    """Refuse at start a proxy the built-in HTTP adapters cannot use, rather than go around it."""
    url = config.base_url or BUILTIN_BASE_URLS.get(config.kind)
    if url is None or config.kind not in BUILTIN_BASE_URLS:
        return  # echo needs no network; a plugin reaches its API its own way
    try:
        proxy_for(url, env)
    except UnsupportedProxy as exc:
        raise BadRequest(f"Provider {config.name!r} cannot start: {exc}", field=exc.variable) from None


def default_provider(configs: Iterable[ProviderConfig], env: Mapping[str, str]) -> str:
    """``DEFAULT_PROVIDER`` if set (it must be configured), else the first of openai, anthropic, else echo."""
    names = [config.name for config in configs]
    wanted = _get(env, "DEFAULT_PROVIDER")
    if wanted is not None:
        if wanted not in names:
            raise BadRequest(
                f"DEFAULT_PROVIDER is {wanted!r}, which is not configured. Configured providers: {', '.join(names)}.",
                field="DEFAULT_PROVIDER",
            )
        return wanted
    for name in ("openai", "anthropic"):
        if name in names:
            return name
    return "echo"
