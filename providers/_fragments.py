"""Plain messages' JSON, encoded once and spliced into every request body that sends them again.

A stored conversation's turn sends the same earlier messages as the turn before, plus the newest: the runtime
keeps each one's :class:`~providers.base.ChatMessage` with its instance's copy of the window, so the adapters
keep each plain message's encoded JSON beside it (``{"role": ..., "content": ...}``, the form both OpenAI's and
Anthropic's APIs take for a text turn) and write a body's messages by joining those bytes instead of building
and encoding a dict per message on every turn. The bytes are exactly what encoding the message's dict writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from providers.base import ChatMessage

__all__ = ["encode_array", "fragments", "plain", "plain_fragment"]

_encode = msgspec.json.Encoder().encode
# What the kept fragments hold at most (bytes of JSON); past it the oldest go first.
_MAX_BYTES = 16_000_000

# By the message object's id, with the message itself, which keeps that id from being reused while it is here.
_kept: dict[int, tuple[ChatMessage, bytes]] = {}
_size = 0


def plain(message: ChatMessage) -> bool:
    """Whether ``message`` is a text turn (a user's or an answer, without tool calls or images)."""
    return message.role != "tool" and not message.tool_calls and not message.images


def plain_fragment(message: ChatMessage) -> bytes:
    """The JSON of a plain message (:func:`plain`): ``{"role": ..., "content": ...}``, encoded once per message."""
    global _size
    found = _kept.get(id(message))
    if found is not None and found[0] is message:
        return found[1]
    fragment = _encode({"role": message.role, "content": message.content or ""})
    _kept[id(message)] = (message, fragment)
    _size += len(fragment)
    while _size > _MAX_BYTES:
        _size -= len(_kept.pop(next(iter(_kept)))[1])
    return fragment


def fragments(messages: Iterable[ChatMessage], other: Callable[[ChatMessage], bytes], out: list[bytes]) -> list[bytes]:
    """``out`` with each message's JSON after it: a plain message's fragment (:func:`plain_fragment`), any other's
    written by ``other``. A message kept from an earlier turn costs one lookup (messages are immutable, so one
    kept was plain when it was encoded)."""
    found_by_id = _kept.get
    for message in messages:
        found = found_by_id(id(message))
        if found is not None and found[0] is message:
            out.append(found[1])
        elif plain(message):
            out.append(plain_fragment(message))
        else:
            out.append(other(message))
    return out


def encode_array(fragments: list[bytes]) -> msgspec.Raw:
    """A JSON array of already encoded items, to be spliced into a body as it is encoded: the items are copied
    once (the brackets go onto the first and last, not around the joined whole)."""
    if not fragments:
        return msgspec.Raw(b"[]")
    if len(fragments) == 1:
        return msgspec.Raw(b"[" + fragments[0] + b"]")
    edges = [b"[" + fragments[0], *fragments[1:-1], fragments[-1] + b"]"]
    return msgspec.Raw(b",".join(edges))
