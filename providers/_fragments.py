"""Plain messages' JSON, encoded once and spliced into every request body that sends them again.

A stored conversation's turn sends the same earlier messages as the turn before, plus the newest: the runtime
keeps each one's :class:`~providers.base.ChatMessage` with its instance's copy of the window, so the adapters
keep each plain message's encoded JSON beside it (``{"role": ..., "content": ...}``, the form both OpenAI's and
Anthropic's APIs take for a text turn) and write a body's messages by joining those bytes instead of building
and encoding a dict per message on every turn. The bytes are exactly what encoding the message's dict writes.
"""

from __future__ import annotations

import msgspec

from providers.base import ChatMessage

__all__ = ["encode_array", "plain", "plain_fragment"]

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


def encode_array(fragments: list[bytes]) -> msgspec.Raw:
    """A JSON array of already encoded items, to be spliced into a body as it is encoded."""
    return msgspec.Raw(b"[" + b",".join(fragments) + b"]")
