"""The base of the HTTP adapters: what they share in construction (key, URL, timeouts, headers, the prepared
request head, the client), the streaming call, shutdown and closing."""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import ModuleType
from typing import Any, ClassVar

import msgspec

from core.events import ProviderEvent
from providers import _upstream
from providers._http import HttpPool
from providers.base import ProviderConfig, ProviderRequest

__all__ = ["HttpAdapter", "sdk_headers"]

# What an HTTP adapter sends without a key: local OpenAI-compatible servers want some key but check none.
NO_KEY = "unused"

_encode = msgspec.json.Encoder().encode


def sdk_headers(sdk: ModuleType, client: str) -> dict[str, str]:
    """The client headers the official SDK's ``client`` class sends on every request, auth aside: its
    user agent and the ``X-Stainless-*`` platform headers.

    They are taken from the SDK's own helper (``<sdk>._base_client.platform_headers``, shared by OpenAI's and
    Anthropic's generated SDKs), so they follow the installed SDK without building a client for it: a client
    costs ~23 ms of CPU and an HTTP stack that would never send. tests/test_providers.py checks them against
    what the SDKs send.
    """
    version = sdk.__version__
    base = importlib.import_module(f"{sdk.__name__}._base_client")
    headers = {"User-Agent": f"{client}/Python {version}"}
    headers.update(base.platform_headers(version, platform=None))
    # The SDK names the async library of each request; the runtime always runs on asyncio (uvloop included).
    headers["X-Stainless-Async"] = "async:asyncio"
    return headers


class HttpAdapter:
    """An LLM API reached over HTTP: one streaming POST per answer through the lean keep-alive client.

    A subclass says what differs: its ``kind``, ``DEFAULT_BASE_URL``, ``DEFAULT_MODEL`` and ``PATH`` (below the
    base URL), its headers for a key (``_headers``), how its body is built (``build_body``) and how its
    events are read (``_reader``). The rest (the key, the base URL, the timeouts and connection bound, the
    request head prepared once) is built here.
    """

    kind: str
    DEFAULT_BASE_URL: ClassVar[str]
    DEFAULT_MODEL: ClassVar[str]
    PATH: ClassVar[str]

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.default_model = config.default_model or self.DEFAULT_MODEL
        self.base_url = config.base_url or self.DEFAULT_BASE_URL
        self._api_key = config.api_key
        headers = self._headers(config.api_key or NO_KEY)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "text/event-stream"
        self._pool = HttpPool(
            self.base_url,
            headers=headers,
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            read_timeout=config.timeout,
        )
        self._prepared = self._pool.prepare(self.PATH)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    def _headers(self, api_key: str) -> dict[str, str]:
        """The headers of every request: auth, the vendor's version, the client's own."""
        raise NotImplementedError

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        raise NotImplementedError

    def encode_body(self, request: ProviderRequest) -> bytes:
        """The body :meth:`build_body` makes, as the JSON sent: an adapter may write it faster, byte for byte alike."""
        return _encode(self.build_body(request))

    def _reader(self) -> _upstream.EventReader:
        raise NotImplementedError

    def stream_batches(self, request: ProviderRequest) -> AsyncGenerator[list[ProviderEvent], None]:
        body = self.encode_body(request)
        # A traced turn's head carries its trace context: prepared for it, as the others' is once for all.
        prepared = self._pool.prepare(self.PATH, request.trace_context) if request.trace_context else self._prepared
        return _upstream.stream_batches(self.name, self._pool, prepared, body, self._reader(), self._api_key)

    def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        return _upstream.one_by_one(self.stream_batches(request))

    def interrupt(self, exc: BaseException) -> None:
        """End every answer under way with ``exc`` (at shutdown), and take no new ones."""
        self._pool.interrupt(exc)

    async def aclose(self) -> None:
        """Close the connections, once the finished answers' last bytes are read (a second at most)."""
        await self._pool.aclose()
