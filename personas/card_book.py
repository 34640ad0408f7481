"""A character card's ``character_book`` as a persona's lorebook (contract section 14), and back.

Import reads, in this order (a later source wins): the V2 entry fields (``keys``, ``secondary_keys``,
``content``, ``enabled``, ``insertion_order``, ``case_sensitive``, ``name``, ``comment``, ``constant``,
``selective``, ``id``), V3's ``use_regex``, SillyTavern's entry ``extensions`` (``position`` 4 is
``at_depth``, ``depth``, ``role`` 0/1/2, ``probability`` with ``useProbability``, ``group``, ``sticky``,
``cooldown``, ``delay``, ``selectiveLogic`` 0 AND ANY, 1 NOT ALL, 2 NOT ANY, 3 AND ALL,
``match_whole_words``, ``case_sensitive``), then V3 decorators: the ``@@`` lines that open an entry's
content (``@@depth N``, ``@@role R``, ``@@activate_only_after N`` as ``delay``, ``@@constant``,
``@@dont_activate`` as not enabled). Decorators leave the content, which the model sees, and are kept.

- A key written ``/pattern/flags`` is a regular expression: the entry gets ``use_regex``, and its plain keys
  are escaped so that they still match as written. SillyTavern writes ``use_regex: true`` on every entry
  and means just that (its plain keys are literal), so its entries (those whose extensions it wrote) are
  read that way; a V3 card's ``use_regex`` makes every key a pattern.
- ``selective: false`` turns secondary keys off, as in the V2 specification: the entry has none, and the
  card's stay kept for the export.
- Nothing is lost. Our entry's ``extensions`` are the card entry's own (SillyTavern's keys included, as
  they came), plus ``card``: the card entry's fields we have no field for (``priority``, ``selective``,
  ``position``, its typed ``id``, ``use_regex``, fields we do not know), and ``card_decorators``: the
  decorator lines. The book's ``name``, ``description`` and ``extensions`` stay in the kept card.

Export writes an entry that is as it was imported exactly as the card had it; an entry edited since (or a
book of our own) is written from the persona, in V2 fields and SillyTavern's extensions both, over what the
card entry had.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import BadRequest
from personas.models import Lorebook, LoreEntry

__all__ = ["CARD_DECORATORS", "CARD_FIELDS", "book_to_lorebook", "lorebook_to_book"]

# In an entry's extensions: the card entry's fields we have no field for, and its decorator lines.
CARD_FIELDS = "card"
CARD_DECORATORS = "card_decorators"
_OURS = (CARD_FIELDS, CARD_DECORATORS)

_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
_LOGIC = ("and_any", "not_all", "not_any", "and_all")  # SillyTavern's selectiveLogic 0..3
_ROLES = ("system", "user", "assistant")  # SillyTavern's role 0..2
_AT_DEPTH = 4  # SillyTavern's position "at depth"; 0..3 and 5..7 are all before or after the prompt for us
# Card entry fields our entry holds; the rest stay in ``extensions["card"]``.
_MAPPED = ("keys", "secondary_keys", "content", "extensions", "enabled", "insertion_order", "case_sensitive")
_MAPPED_TOO = ("name", "comment", "constant")
_TIMED = ("sticky", "cooldown", "delay")


def _int(value: Any, default: int, low: int, high: int) -> int:
    """A card's number as an int within our bounds; anything else is the default."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return default
    return max(low, min(high, int(value)))


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str) and v.strip()] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# Card → lorebook ------------------------------------------------------------------------------------


def book_to_lorebook(book: Any, *, field: str) -> dict[str, Any]:
    """The lorebook (as JSON, validated with the rest of the persona) of a card's ``character_book``."""
    if not isinstance(book, dict):
        raise BadRequest(f"`{field}` must be an object with `entries`.", field=field)
    raw_entries = book.get("entries") or []
    if not isinstance(raw_entries, list):
        raise BadRequest(f"`{field}.entries` must be a list of entries.", field=f"{field}.entries")
    for index, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            raise BadRequest(
                f"`{field}.entries[{index}]` must be an object (keys, content, ...).", field=f"{field}.entries[{index}]"
            )
    ids = _entry_ids(raw_entries)
    return {
        "scan_depth": _int(book.get("scan_depth"), 2, 0, 1000),
        "token_budget": _int(book.get("token_budget"), 1024, 0, 1_000_000),
        "recursive": book.get("recursive_scanning") is True,
        "entries": [_entry(raw, entry_id) for raw, entry_id in zip(raw_entries, ids, strict=True)],
    }


def _entry_ids(entries: list[dict[str, Any]]) -> list[str]:
    """Our ids: the card's (as text) where it has a unique one, else one made from the entry's place, so that
    importing the same card again gives the same ids (what tells edited entries from the rest on export)."""
    given = [str(e["id"]) if isinstance(e.get("id"), int | str) and str(e["id"]).strip() else None for e in entries]
    counts: dict[str, int] = {}
    for entry_id in given:
        if entry_id is not None:
            counts[entry_id] = counts.get(entry_id, 0) + 1
    taken = set(counts)
    ids: list[str] = []
    for index, entry_id in enumerate(given):
        if entry_id is None or counts[entry_id] > 1:
            entry_id, n = f"entry-{index}", 0
            while entry_id in taken:
                n += 1
                entry_id = f"entry-{index}-{n}"
        taken.add(entry_id)
        ids.append(entry_id)
    return ids


def _entry(raw: dict[str, Any], entry_id: str) -> dict[str, Any]:
    st = dict(raw["extensions"]) if isinstance(raw.get("extensions"), dict) else {}
    leftover = {k: v for k, v in raw.items() if k not in _MAPPED and k not in _MAPPED_TOO}
    written = raw.get("content")
    content, decorators = _split_decorators(written if isinstance(written, str) else "")

    keys, secondary = _strings(raw.get("keys")), _strings(raw.get("secondary_keys"))
    if raw.get("selective") is False and secondary:
        leftover["secondary_keys"] = raw["secondary_keys"]  # off in the card: kept, not used
        secondary = []
    use_regex = raw.get("use_regex") is True and not _sillytavern(st)
    if any(_REGEX_KEY.match(k) for k in (*keys, *secondary)):
        if not use_regex:  # the slashed keys are patterns; the plain ones must still match as written
            keys = [k if _REGEX_KEY.match(k) else re.escape(k) for k in keys]
            secondary = [k if _REGEX_KEY.match(k) else re.escape(k) for k in secondary]
        use_regex = True

    position, depth = ("at_depth" if st.get("position") == _AT_DEPTH else "system"), _int(st.get("depth"), 4, 0, 1000)
    logic, role = _int(st.get("selectiveLogic"), 0, 0, 3), _int(st.get("role"), 0, 0, 2)
    entry: dict[str, Any] = {
        "id": entry_id,
        "name": _text(raw.get("name")),
        "comment": _text(raw.get("comment")),
        "keys": keys,
        "secondary_keys": secondary,
        "selective_logic": _LOGIC[logic],
        "content": content,
        "enabled": raw.get("enabled") is not False,
        "constant": raw.get("constant") is True,
        "case_sensitive": st["case_sensitive"]
        if isinstance(st.get("case_sensitive"), bool)
        else raw.get("case_sensitive") is True,
        "whole_words": st["match_whole_words"] if isinstance(st.get("match_whole_words"), bool) else True,
        "use_regex": use_regex,
        "insertion_order": _int(raw.get("insertion_order"), 100, -1_000_000, 1_000_000),
        "position": position,
        "depth": depth,
        "role": _ROLES[role],
        "probability": 100 if st.get("useProbability") is False else _int(st.get("probability"), 100, 0, 100),
        "group": _text(st.get("group")),
        **{name: _int(st.get(name), 0, 0, 10_000) for name in _TIMED},
    }
    for line in decorators:
        _apply_decorator(entry, line)
    extensions = st
    if leftover:
        extensions[CARD_FIELDS] = leftover
    if decorators:
        extensions[CARD_DECORATORS] = decorators
    entry["extensions"] = extensions
    return entry


def _sillytavern(st: dict[str, Any]) -> bool:
    """Whether an entry comes from SillyTavern, which writes ``use_regex: true`` on every entry and takes a key
    for a pattern only when it is written ``/pattern/flags``: there a plain key is literal."""
    return "selectiveLogic" in st or "display_index" in st


def _split_decorators(content: str) -> tuple[str, list[str]]:
    """V3 decorators are the lines starting ``@@`` that open the content; the text after them is the entry's."""
    lines = content.split("\n")
    at = 0
    while at < len(lines) and lines[at].startswith("@@"):
        at += 1
    return "\n".join(lines[at:]), lines[:at]


def _decorator(line: str) -> tuple[str, str]:
    name, _, value = line[2:].strip().partition(" ")
    return name.lower(), value.strip()


def _apply_decorator(entry: dict[str, Any], line: str) -> None:
    if line.startswith("@@@"):  # a fallback for the decorator before it, for readers that lack that one
        return
    name, value = _decorator(line)
    if name == "depth" and value.isdigit():
        entry.update(position="at_depth", depth=min(int(value), 1000))
    elif name == "role" and value.lower() in _ROLES:
        entry["role"] = value.lower()
    elif name == "activate_only_after" and value.isdigit():
        entry["delay"] = min(int(value), 10_000)
    elif name == "constant":
        entry["constant"] = True
    elif name == "dont_activate":
        entry["enabled"] = False


# Lorebook → card ------------------------------------------------------------------------------------


def lorebook_to_book(book: Lorebook, kept: dict[str, Any] | None, imported: Lorebook | None) -> dict[str, Any]:
    """A ``character_book`` of ``book``: ``kept`` is the card's own (or None), ``imported`` what it maps to now.

    Entries unchanged since the import are written as the card had them; the rest from the persona."""
    kept = kept or {}
    listed = kept.get("entries")
    kept_entries: list[Any] = listed if isinstance(listed, list) else []
    as_imported: dict[str, tuple[LoreEntry, Any]] = {}
    if imported is not None and len(imported.entries) == len(kept_entries):
        as_imported = {e.id or "": (e, raw) for e, raw in zip(imported.entries, kept_entries, strict=True)}
    out: dict[str, Any] = {"extensions": {}, **{k: v for k, v in kept.items() if k != "entries"}}
    if imported is None or (imported.scan_depth, imported.token_budget, imported.recursive) != (
        book.scan_depth,
        book.token_budget,
        book.recursive,
    ):
        out.update(scan_depth=book.scan_depth, token_budget=book.token_budget, recursive_scanning=book.recursive)
    entries = []
    for entry in book.entries:
        same = as_imported.get(entry.id or "")
        entries.append(same[1] if same is not None and same[0] == entry else _card_entry(entry))
    out["entries"] = entries
    return out


def _card_entry(entry: LoreEntry) -> dict[str, Any]:
    """A V2 entry, with SillyTavern's extensions, of one of ours; over the card entry's fields it came with."""
    leftover = entry.extensions.get(CARD_FIELDS)
    leftover = dict(leftover) if isinstance(leftover, dict) else {}
    decorators = entry.extensions.get(CARD_DECORATORS)
    decorators = [d for d in decorators if isinstance(d, str)] if isinstance(decorators, list) else []
    st = {k: v for k, v in entry.extensions.items() if k not in _OURS}
    # Keys as V2 readers (SillyTavern) take them, a pattern written /pattern/flags, unless the card entry had
    # V3's `use_regex` (and not from SillyTavern, which writes it on every entry and means the slashes).
    st_keys = "use_regex" not in leftover or _sillytavern(st)
    at_depth = entry.position == "at_depth"
    card_position = leftover.get("position")
    if at_depth:
        st["position"] = _AT_DEPTH
    elif not isinstance(st.get("position"), int) or st.get("position") == _AT_DEPTH:
        st["position"] = 1 if card_position == "after_char" else 0
    st.update(
        depth=entry.depth,
        role=_ROLES.index(entry.role),
        probability=entry.probability,
        useProbability=entry.probability < 100 or st.get("useProbability", True) is not False,
        group=entry.group or "",
        selectiveLogic=_LOGIC.index(entry.selective_logic),
        match_whole_words=entry.whole_words,
        case_sensitive=entry.case_sensitive,
        **{name: getattr(entry, name) for name in _TIMED},
    )
    keys, secondary = entry.keys, entry.secondary_keys
    if entry.use_regex and st_keys:
        flags = "" if entry.case_sensitive else "i"
        keys = [k if _REGEX_KEY.match(k) else f"/{k}/{flags}" for k in keys]
        secondary = [k if _REGEX_KEY.match(k) else f"/{k}/{flags}" for k in secondary]
    card: dict[str, Any] = {**leftover}
    if not secondary and leftover.get("selective") is False and "secondary_keys" in leftover:
        secondary = leftover["secondary_keys"]  # the card's, still off
    else:
        card["selective"] = bool(secondary) or leftover.get("selective") is True
    card_id = leftover.get("id")
    if card_id is None or str(card_id) != entry.id:
        card_id = int(entry.id) if entry.id and entry.id.isdigit() else entry.id
    card.update(
        id=card_id,
        keys=keys,
        secondary_keys=secondary,
        content="\n".join([*_decorators_now(decorators, entry), entry.content]) if decorators else entry.content,
        extensions=st,
        enabled=entry.enabled,
        insertion_order=entry.insertion_order,
        case_sensitive=entry.case_sensitive,
        name=entry.name or "",
        comment=entry.comment or "",
        constant=entry.constant,
    )
    if "use_regex" in leftover and not st_keys:
        card["use_regex"] = entry.use_regex
    if card_position in ("before_char", "after_char") or "position" not in card:
        card["position"] = card_position if card_position in ("before_char", "after_char") else "before_char"
    return card


def _decorators_now(lines: list[str], entry: LoreEntry) -> list[str]:
    """The entry's decorator lines with the ones we read rewritten to what the entry says now."""
    out = []
    for line in lines:
        name, _ = _decorator(line) if not line.startswith("@@@") else ("", "")
        if name == "depth":
            line = f"@@depth {entry.depth}" if entry.position == "at_depth" else ""
        elif name == "role":
            line = f"@@role {entry.role}"
        elif name == "activate_only_after":
            line = f"@@activate_only_after {entry.delay}" if entry.delay else ""
        elif name == "constant":
            line = line if entry.constant else ""
        elif name == "dont_activate":
            line = line if not entry.enabled else ""
        if line:
            out.append(line)
    return out
