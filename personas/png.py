"""PNG text chunks: reading a character card out of a PNG file, and writing one into a PNG (an avatar, or plain)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from core.errors import BadRequest, PayloadTooLarge

__all__ = [
    "CARD_KEYWORDS",
    "SIGNATURE",
    "TextChunk",
    "card_png",
    "image_only",
    "plain_png",
    "read_card_text",
    "text_chunks",
    "with_card",
]

SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ``ccv3`` holds a V3 card and wins over ``chara`` (V2) when a file carries both, as the V3 spec asks.
CARD_KEYWORDS = ("ccv3", "chara")

_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
_MAX_CHUNK = 2**31 - 1  # the PNG specification's own bound on a chunk length


class TextChunk(NamedTuple):
    """A decoded ``tEXt``, ``zTXt`` or ``iTXt`` chunk: its keyword and its text."""

    keyword: str
    text: str


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every chunk up to ``IEND``, each checked against its CRC."""
    if not data.startswith(SIGNATURE):
        raise BadRequest("The file is not a PNG image (its signature is wrong); upload a PNG character card.")
    offset = len(SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise BadRequest("The PNG file is truncated: it ends before its IEND chunk.")
        length, kind = struct.unpack_from(">I4s", data, offset)
        if length > _MAX_CHUNK or not kind.isalpha():
            raise BadRequest(f"The PNG file is damaged: bad chunk header at byte {offset}.")
        end = offset + 8 + length + 4
        if end > len(data):
            raise BadRequest(f"The PNG file is truncated inside its {kind.decode('latin-1')} chunk.")
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(kind + body) != crc:
            raise BadRequest(f"The PNG file is damaged: the CRC of its {kind.decode('latin-1')} chunk does not match.")
        yield kind, body
        if kind == b"IEND":
            return
        offset = end


def _inflate(compressed: bytes, limit: int, keyword: str) -> bytes:
    """Decompress at most ``limit`` bytes, so a small chunk cannot expand into gigabytes."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"The PNG text chunk {keyword!r} is not valid compressed data: {exc}.") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"The PNG text chunk {keyword!r} decompresses to more than {limit} bytes.")
    if not inflater.eof:
        raise BadRequest(f"The PNG text chunk {keyword!r} is truncated: its compressed data ends early.")
    return out


def _decode(kind: bytes, body: bytes, limit: int, seen: set[str]) -> TextChunk | None:
    keyword_bytes, sep, rest = body.partition(b"\0")
    if not sep:
        return None  # a malformed text chunk is not ours to judge; we only look for card keywords
    keyword = keyword_bytes.decode("latin-1")
    if keyword.lower() not in CARD_KEYWORDS or keyword.lower() in seen:
        return None
    seen.add(keyword.lower())
    if kind == b"tEXt":
        return TextChunk(keyword, rest.decode("latin-1"))
    if kind == b"zTXt":
        if not rest or rest[0] != 0:
            raise BadRequest(f"The PNG text chunk {keyword!r} uses an unknown compression method.")
        return TextChunk(keyword, _inflate(rest[1:], limit, keyword).decode("latin-1"))
    # iTXt: compression flag, method, language tag NUL, translated keyword NUL, UTF-8 text.
    if len(rest) < 2:
        raise BadRequest(f"The PNG text chunk {keyword!r} is truncated.")
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise BadRequest(f"The PNG text chunk {keyword!r} is malformed.")
    text = parts[2]
    if compressed:
        if method != 0:
            raise BadRequest(f"The PNG text chunk {keyword!r} uses an unknown compression method.")
        text = _inflate(text, limit, keyword)
    try:
        return TextChunk(keyword, text.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(f"The PNG text chunk {keyword!r} is not valid UTF-8.") from None


def text_chunks(data: bytes, *, limit: int) -> list[TextChunk]:
    """The card text chunks of a PNG (validating every chunk's CRC on the way): the first of each card keyword.

    Later chunks of a keyword are skipped without being inflated, so a file of many small compressed chunks
    cannot make one import decompress ``limit`` bytes again and again (and hold every copy).
    """
    found = []
    seen: set[str] = set()
    for kind, body in _chunks(data):
        if kind in _TEXT_TYPES:
            chunk = _decode(kind, body, limit, seen)
            if chunk is not None:
                found.append(chunk)
    return found


def read_card_text(data: bytes, *, limit: int) -> str:
    """The card's text (base64 of its JSON): the ``ccv3`` chunk if present, else ``chara``."""
    chunks: dict[str, str] = {}
    for chunk in text_chunks(data, limit=limit):
        chunks.setdefault(chunk.keyword.lower(), chunk.text)
    for keyword in CARD_KEYWORDS:
        if keyword in chunks:
            return chunks[keyword]
    raise BadRequest(
        "The PNG image holds no character card: it has no `chara` or `ccv3` text chunk. "
        "Export the card again from the application that made it."
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def card_png(chunks: list[tuple[str, str]], *, kind: bytes = b"tEXt") -> bytes:
    """A 1x1 PNG carrying ``(keyword, text)`` chunks of type ``kind`` (``tEXt``, ``zTXt`` or ``iTXt``)."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    pixels = zlib.compress(b"\0\0\0\0\0")  # filter byte + one transparent pixel
    text = b""
    for keyword, value in chunks:
        key = keyword.encode("latin-1") + b"\0"
        if kind == b"tEXt":
            body = key + value.encode("latin-1")
        elif kind == b"zTXt":
            body = key + b"\0" + zlib.compress(value.encode("latin-1"))
        else:
            body = key + b"\1\0" + b"\0\0" + zlib.compress(value.encode("utf-8"))
        text += _chunk(kind, body)
    return SIGNATURE + _chunk(b"IHDR", header) + text + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def _is_card_chunk(kind: bytes, body: bytes) -> bool:
    return kind in _TEXT_TYPES and body.partition(b"\0")[0].decode("latin-1").lower() in CARD_KEYWORDS


def image_only(data: bytes) -> bytes:
    """The PNG without its card text chunks (``chara``, ``ccv3``): the picture, and none of the card's text.

    Every chunk is checked on the way (a damaged file is a 400); the ones kept are copied byte for byte.
    """
    kept = [_chunk(kind, body) for kind, body in _chunks(data) if not _is_card_chunk(kind, body)]
    if not kept or not kept[0][4:8] == b"IHDR":
        raise BadRequest("The PNG file is damaged: it does not start with an IHDR chunk.")
    return SIGNATURE + b"".join(kept)


def with_card(data: bytes, chunks: list[tuple[str, str]]) -> bytes:
    """The PNG ``data`` carrying ``(keyword, text)`` as ``tEXt`` chunks before its ``IEND``, in place of any card
    chunks it had (as SillyTavern writes them)."""
    image = image_only(data)
    text = b"".join(
        _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value.encode("latin-1")) for keyword, value in chunks
    )
    iend = _chunk(b"IEND", b"")
    return image[: -len(iend)] + text + iend


def plain_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour: a card's picture when its persona has no PNG avatar."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = b"\0" + bytes(rgb) * width  # filter byte "none", then the row's pixels
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(row * height)) + _chunk(b"IEND", b"")
