"""Images a client sends in a message: checked once where they come in, and sized for the context budget.

An image is a web address (``http``/``https``), which the provider fetches, or the image itself as a base64
``data:`` URL. A data URL must hold a PNG, JPEG, GIF or WebP image (the types both OpenAI and Anthropic take)
of at most :data:`MAX_IMAGE_BYTES`, and its bytes must be the type it names; its width and height are read
from its header, so its tokens can be counted by its size (:func:`runtime.chat.tokens.image_tokens`).
"""

from __future__ import annotations

import binascii
import struct
from typing import Literal

from core.errors import BadRequest, PayloadTooLarge
from providers import Image

__all__ = ["IMAGE_TYPES", "MAX_IMAGE_BYTES", "dimensions", "image_of", "media_url"]

# Anthropic's limit for one image (OpenAI's is larger), so an image that passes here passes either provider.
MAX_IMAGE_BYTES = 5 * 1024 * 1024

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

Detail = Literal["low", "high", "auto"]
_DETAILS: dict[str, Detail] = {"low": "low", "high": "high", "auto": "auto"}


def image_of(url: str, field: str, *, at: int = 0, detail: str | None = None, detail_field: str = "") -> Image:
    """The image a client sent in ``field`` (``messages[0].content[1]``), or a 400 or 413 naming the field
    (``detail_field`` for its ``detail``: ``field.image_url.detail`` unless said)."""
    chosen = _DETAILS.get(detail) if detail is not None else None
    if detail is not None and chosen is None:
        where = detail_field or f"{field}.image_url.detail"
        raise BadRequest(f"`{where}` is {detail[:20]!r}: send one of low, high or auto, or leave it out.", field=where)
    if url.startswith("data:"):
        media_type, data = _decoded(url, field)
        width, height = dimensions(data, media_type) or (None, None)
        return Image(url=url, at=at, detail=chosen, width=width, height=height)
    if url.startswith(("https://", "http://")) and len(url) > len("https://"):
        return Image(url=url, at=at, detail=chosen)
    raise BadRequest(
        f"`{field}` is not an image URL: send an http(s) address or a data URL (data:image/png;base64,...).",
        field=field,
    )


def media_url(media_type: str, data: str) -> str:
    """A base64 image as the data URL the runtime carries it in."""
    return f"data:{media_type};base64,{data}"


def _decoded(url: str, field: str) -> tuple[str, bytes]:
    head, comma, data = url.partition(",")
    media_type, _, encoding = head[len("data:") :].partition(";")
    if not comma or encoding != "base64":
        raise BadRequest(
            f"`{field}` is a data URL that is not base64: send data:<image type>;base64,<data>.", field=field
        )
    if media_type not in IMAGE_TYPES:
        raise BadRequest(
            f"`{field}` is a data URL of type {media_type[:100]!r}: send a PNG, JPEG, GIF or WebP image "
            "(image/png, image/jpeg, image/gif, image/webp).",
            field=field,
        )
    # Base64 is four characters for three bytes: a body too large is refused before it is decoded.
    if len(data) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise PayloadTooLarge(
            f"`{field}` is an image of more than {MAX_IMAGE_BYTES // (1024 * 1024)} MB, the most one image may "
            "be: send a smaller image, or a link to it.",
            field=field,
        )
    try:
        raw = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise BadRequest(f"`{field}` is a data URL whose data is not valid base64.", field=field) from None
    found = _sniffed(raw)
    if found != media_type:
        said = found or "no PNG, JPEG, GIF or WebP image"
        raise BadRequest(
            f"`{field}` says it is {media_type}, but its bytes are {said}: send the image's own type.", field=field
        )
    return media_type, raw


def _sniffed(data: bytes) -> str | None:
    """An image's type by its first bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def dimensions(data: bytes, media_type: str) -> tuple[int, int] | None:
    """An image's width and height from its header, or None when the header does not say."""
    try:
        if media_type == "image/png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if media_type == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if media_type == "image/jpeg":
            return _jpeg(data)
        if media_type == "image/webp":
            return _webp(data)
    except struct.error:
        return None
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """The size in a JPEG's start-of-frame segment, found by walking its segments."""
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        # Start of frame: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None
