"""Token counts, offline: a model family's own tokenizer where a package ships it, else an estimate.

OpenAI's families (cl100k, o200k) are counted exactly with ``bpe-openai``, which embeds their vocabularies
(tiktoken fetches them from the network on first use, so it is not used). Anthropic's and open models'
tokenizers ship with no package we can use offline: their counts are estimated from UTF-8 bytes, on the
generous side, and a conversation corrects the estimate with what the provider reported for its earlier
turns (:func:`calibrated`).

Images are counted by their size, as the provider bills them (:func:`image_tokens`).

Also here: how many tokens a model takes (:func:`context_window_for`), from a table of well-known models.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from providers import Image

__all__ = [
    "ANSWER_RESERVE",
    "ESTIMATE",
    "MESSAGE_OVERHEAD",
    "Tokenizer",
    "calibrated",
    "context_window_for",
    "estimate_size",
    "estimate_tokens",
    "image_tokens",
    "load_tokenizers",
    "tokenizer_for",
]

# Tokens each message costs beyond its text (role markers and separators), as OpenAI's chat format spends.
MESSAGE_OVERHEAD = 4

# Bytes per token the estimate assumes: English runs at about 3.9 bytes per cl100k token and Claude's
# tokenizer cuts finer, so 3.5 counts a little more than either (10 % over cl100k on a mixed sample).
_BYTES_PER_TOKEN = 3.5
# What a turn's answer may take when its request does not bound it (``max_tokens``): contract section 13's
# reserve, kept out of a turn's context budget and held against token limits at admission.
ANSWER_RESERVE = 1024

# A conversation's correction of the estimate stays within these bounds, so one odd report cannot make
# the budget absurd.
_RATIO_BOUNDS = (0.75, 2.0)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by its UTF-8 length (an ASCII string's length is its byte count)."""
    return estimate_size(len(text) if text.isascii() else len(text.encode()))


def estimate_size(size: int) -> int:
    """Tokens of a text of ``size`` UTF-8 bytes, by the estimate."""
    return int(size / _BYTES_PER_TOKEN + 0.999)


# An image whose size is unknown (a web address the provider fetches): OpenAI's count for a 1024x1024 image
# (four tiles), and Anthropic's most for one image (about 1.15 megapixels, which larger images are cut to).
_OPENAI_IMAGE_UNKNOWN = 765
_ANTHROPIC_IMAGE_MOST = 1600


def image_tokens(image: Image, model: str) -> int:
    """The tokens ``image`` costs ``model``.

    Claude models: ``width * height / 750`` after the image is scaled to fit 1568 pixels on its long side and
    1.15 megapixels, at most 1600. Every other model, by OpenAI's tiles (gpt-4o's figures): ``detail`` low is
    85; otherwise the image is scaled to fit 2048x2048, then its short side to 768, and each 512-pixel tile
    costs 170 on top of 85. An image of unknown size counts as 1600 for Claude and 765 (1024x1024) otherwise.
    """
    width, height = image.width, image.height
    if "claude" in model.lower():
        if not width or not height:
            return _ANTHROPIC_IMAGE_MOST
        scale = min(1.0, 1568 / max(width, height), math.sqrt(1_150_000 / (width * height)))
        return min(math.ceil(width * scale * height * scale / 750), _ANTHROPIC_IMAGE_MOST)
    if image.detail == "low":
        return 85
    if not width or not height:
        return _OPENAI_IMAGE_UNKNOWN
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


@dataclass(frozen=True)
class Tokenizer:
    """Counts tokens of text; ``name`` is what render reports (``o200k_base``, ``estimate``)."""

    name: str
    count: Callable[[str], int]

    @property
    def exact(self) -> bool:
        return self.name != ESTIMATE.name


ESTIMATE = Tokenizer(name="estimate", count=estimate_tokens)

_encodings: dict[str, Tokenizer] = {}
_loading = threading.Lock()


def _encoding(name: str) -> Tokenizer:
    """An exact tokenizer from ``bpe-openai``, loaded once (about 0.3 s) on first use."""
    found = _encodings.get(name)
    if found is not None:
        return found
    with _loading:
        found = _encodings.get(name)
        if found is None:
            try:
                import bpe_openai  # loaded only when an OpenAI model is first counted

                encoding: Any = bpe_openai.get_encoding(name)
            except Exception:  # the package missing or broken: counting goes on, estimated
                found = ESTIMATE
            else:
                found = Tokenizer(name=name, count=_counter(name, encoding.encode_ordinary))
            _encodings[name] = found
    return found


# OpenAI's encodings split a text into pieces by a pattern, then encode each piece on its own: a text's count is
# the sum of its pieces'. For ASCII text the patterns reduce to these (\p{L} is [A-Za-z], \p{N} [0-9], the other
# letter classes are empty), which Python's own ``re`` runs; each piece's count is kept, so a message of words
# said before costs a split and some lookups. Without them a count costs ~25 µs for a short message once the
# vocabulary's tables have left the CPU's caches, as they have between one turn and the next.
_ASCII_PIECES = {
    "o200k_base": re.compile(
        r"""[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
        r"""|[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
        r"""|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ),
    "cl100k_base": re.compile(
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?+[A-Za-z]++|[0-9]{1,3}+| ?[^\sA-Za-z0-9]++[\r\n]*+"""
        r"""|\s++\Z|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
}
# Where Python's \s and the encodings' differ on ASCII (the four separators count as spaces to Python only).
_SEPARATORS = re.compile(r"[\x1c-\x1f]")
# Pieces whose counts are kept, at most, and the longest kept (longer ones are rarely said twice).
_PIECES_KEPT = 200_000
_LONGEST_PIECE = 40


def _counter(name: str, encode: Callable[[str], list[int]]) -> Callable[[str], int]:
    """Exact counts with ``encode`` (the encoding ``name``'s), by pieces for ASCII text (:data:`_ASCII_PIECES`)."""
    pattern = _ASCII_PIECES.get(name)
    if pattern is None:
        return lambda text: len(encode(text)) if text else 0
    pieces = pattern.findall
    kept: dict[str, int] = {}
    known = kept.get

    def count(text: str) -> int:
        if not text:
            return 0
        if not text.isascii() or _SEPARATORS.search(text) or (name == "cl100k_base" and text[-1].isspace()):
            # cl100k's \s++$ splits trailing whitespace as its own engine does, not as Python's would.
            return len(encode(text))
        split = pieces(text)
        found = list(map(known, split))
        if None not in found:
            return sum(found)  # type: ignore[arg-type]
        total = 0
        for piece, tokens in zip(split, found, strict=True):
            if tokens is None:
                tokens = len(encode(piece))
                if len(piece) <= _LONGEST_PIECE and len(kept) < _PIECES_KEPT:
                    kept[piece] = tokens
            total += tokens
        return total

    return count


# Model name prefixes of OpenAI's families, longest first where they overlap.
_OPENAI_ENCODINGS = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
)


@functools.lru_cache(maxsize=1024)
def tokenizer_for(model: str) -> Tokenizer:
    """The tokenizer of ``model``'s family: exact for OpenAI's models, else the estimate."""
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, encoding in _OPENAI_ENCODINGS:
        if name.startswith(prefix):
            return _encoding(encoding)
    return ESTIMATE


def load_tokenizers(models: Iterable[str]) -> None:
    """Load the exact tokenizers of ``models`` now: at start-up, in a thread, so that the first turn counting
    with one does not hold the event loop while its tables load (a third of a second, or more)."""
    for model in models:
        tokenizer_for(model)


# Tokens well-known models take, request and answer together, by name prefix (first match wins: the more
# specific prefixes come first). Open models are matched by their family's name anywhere in the id, since
# OpenAI-compatible servers name them freely (`meta-llama/Llama-3.1-8B-Instruct`, `llama3.1:8b`).
_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 1_047_576),
    ("gpt-5", 400_000),
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4-32k", 32_768),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("o1-mini", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("claude-sonnet-4", 200_000),
    ("claude-opus-4", 200_000),
    ("claude-3", 200_000),
    ("claude-haiku-4", 200_000),
    ("claude", 200_000),
)
_OPEN_WINDOWS: tuple[tuple[str, int], ...] = (
    ("llama-3.1", 131_072),
    ("llama3.1", 131_072),
    ("llama-3.2", 131_072),
    ("llama3.2", 131_072),
    ("llama-3.3", 131_072),
    ("llama3.3", 131_072),
    ("llama-3", 8_192),
    ("llama3", 8_192),
    ("qwen2.5", 32_768),
    ("qwen3", 32_768),
    ("mistral-large", 131_072),
    ("mistral-nemo", 131_072),
    ("mistral", 32_768),
    ("mixtral", 32_768),
    ("gemma-3", 131_072),
    ("gemma3", 131_072),
    ("gemma-2", 8_192),
    ("gemma2", 8_192),
    ("phi-4", 16_384),
    ("phi4", 16_384),
    ("deepseek", 65_536),
)


@functools.lru_cache(maxsize=1024)
def context_window_for(model: str) -> int | None:
    """The window of a well-known model, or None when the table does not know it."""
    name = model.lower()
    base = name.rsplit("/", 1)[-1]
    for prefix, window in _WINDOWS:
        if base.startswith(prefix):
            return window
    for family, window in _OPEN_WINDOWS:
        if family in name:
            return window
    return None


def calibrated(ratio: float | None) -> float:
    """A conversation's correction of estimated counts (provider-reported input tokens over our estimate of
    the same request), within bounds; 1 when it has none yet."""
    if ratio is None or ratio != ratio:  # no report yet, or NaN
        return 1.0
    low, high = _RATIO_BOUNDS
    return min(max(ratio, low), high)
