"""The lorebook engine: which of a persona's lore entries a turn is given, and why (contract section 14).

A book is compiled once per saved state of its persona into a :class:`LoreIndex`: every plain key of every
entry goes into one Aho-Corasick automaton (one for the keys that ignore case, over the lowered text, one for
those that do not), so the scanned messages are read once for all keys, whatever the number of entries.
Regular-expression keys (``use_regex``, or a key written ``/pattern/flags``) take the guarded path of
:mod:`core.patterns`: bounded, compiled off the loop and searched under a time budget; one that runs out does
not match and is named in the warnings.

:func:`activate` then decides, in this order: the keys that occur in the scanned text (the latest message and
the ``scan_depth`` before it; an entry's ``extensions.scan_depth`` overrides the book's), the secondary keys'
logic, the timed effects (``delay``, ``cooldown``, ``sticky``, counted in user turns, with their state per
conversation in a :data:`LoreState`), the probability roll (seeded, so a replay or a render of the same turn
decides the same way), recursion over activated content, groups, and last the token budget: constant entries
first, then the highest ``insertion_order``. Every entry that was constant, keyed or carried over is explained
in a :class:`LoreDecision`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ahocorasick
import msgspec
import regex

from core import patterns
from core.errors import BadRequest
from personas.models import Lorebook, LoreEntry

__all__ = [
    "REGEX_SECONDS",
    "LoreDecision",
    "LoreIndex",
    "LoreResult",
    "LoreState",
    "activate",
    "check_patterns",
    "index_for",
]

# How long one regex key may search the scanned text: a chat turn waits for it.
REGEX_SECONDS = 0.05
# Passes over activated content when the book is recursive.
MAX_RECURSION = 3
# Books compiled and kept in this process (by persona and version).
_INDEXES = 256

# Per conversation: entry id → [the last user turn it is active through (sticky), the last turn it is kept out
# through (cooldown)].
LoreState = dict[str, list[int]]


class LoreDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Render's account of one entry: whether it was given to the turn and why (or why not)."""

    id: str
    name: str | None
    activated: bool
    reason: str
    matched: list[str]
    tokens: int


@dataclass(frozen=True)
class _Regex:
    entry: int
    key: str
    secondary: bool
    pattern: str
    flags: int


@dataclass
class LoreIndex:
    """A book compiled for matching: its automata, its regex keys and its entries' scan depths."""

    book: Lorebook
    entries: list[LoreEntry]
    folded: Any  # ahocorasick.Automaton over lowered text, or None
    exact: Any  # over the text as written, or None
    regexes: list[_Regex]
    depths: list[int]
    max_depth: int
    constant: list[int]
    timed: bool
    # Each entry's id, or its number for one written without (a draft's): what its timed effects and its
    # probability roll are kept by, and what render and the turn name it.
    ids: list[str] = field(default_factory=list)
    # Entry number by that id, for the entries a conversation's timed effects name.
    numbers: dict[str, int] = field(default_factory=dict)
    enabled: int = 0
    # Entries whose keys alone decide (no secondary keys, probability, delay or timed effects, not constant).
    plain: frozenset[int] = frozenset()
    # The plain keys found in texts scanned lately, by text: a chat's earlier messages are scanned again on the
    # turns after theirs, and found here instead.
    scans: OrderedDict[str, list[tuple[int, bool, str]]] = field(default_factory=OrderedDict)
    # Content tokens by tokenizer name, counted when first needed.
    tokens: dict[str, list[int | None]] = field(default_factory=dict)


@dataclass
class LoreResult:
    """What a turn is given: system text, messages at a depth, their tokens and ids, and the explanation."""

    system: str = ""
    messages: list[tuple[int, str, str]] = field(default_factory=list)  # (depth, role, content)
    tokens: int = 0
    ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    state: LoreState | None = None
    # Writes the explanation when it is first asked for: a chat turn never reads it, render and test suites do.
    explain: Callable[[], list[LoreDecision]] | None = field(default=None, repr=False)
    _decisions: list[LoreDecision] | None = field(default=None, repr=False)

    @property
    def decisions(self) -> list[LoreDecision]:
        """Every entry that was considered: activated or not, why, the keys it matched and its tokens."""
        if self._decisions is None:
            self._decisions = self.explain() if self.explain is not None else []
        return self._decisions


_indexes: OrderedDict[tuple[Any, ...], LoreIndex] = OrderedDict()


def index_for(key: tuple[Any, ...], book: Lorebook) -> LoreIndex:
    """The compiled index of ``book``, kept under ``key`` (a persona's id, version and update time)."""
    found = _indexes.get(key)
    if found is not None and (found.book is book or found.book == book):
        found.book = book
        _indexes.move_to_end(key)
        return found
    index = _compile(book)
    _indexes[key] = index
    while len(_indexes) > _INDEXES:
        _indexes.popitem(last=False)
    return index


def _regex_key(key: str, entry: LoreEntry) -> tuple[str, int] | None:
    """A key's pattern and flags when it is a regular expression: ``/pattern/flags``, or any key with ``use_regex``."""
    flags = 0 if entry.case_sensitive else regex.IGNORECASE
    if len(key) > 2 and key[0] == "/":
        end = key.rfind("/")
        tail = key[end + 1 :]
        if end > 0 and all(c in "gimsuy" for c in tail):
            for letter, flag in (("i", regex.IGNORECASE), ("m", regex.MULTILINE), ("s", regex.DOTALL)):
                if letter in tail:
                    flags |= flag
            return key[1:end], flags
    if entry.use_regex:
        return key, flags
    return None


def _compile(book: Lorebook) -> LoreIndex:
    folded = ahocorasick.Automaton()
    exact = ahocorasick.Automaton()
    regexes: list[_Regex] = []
    depths: list[int] = []
    constant: list[int] = []
    timed = False
    entries = book.entries
    for number, entry in enumerate(entries):
        depth = entry.extensions.get("scan_depth") if entry.extensions else None
        own = isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0
        depths.append(depth if own else book.scan_depth)  # type: ignore[arg-type]
        if not entry.enabled:
            continue
        timed = timed or bool(entry.sticky or entry.cooldown)
        if entry.constant:
            constant.append(number)
        for secondary, keys in ((False, entry.keys), (True, entry.secondary_keys)):
            for key in keys:
                pattern = _regex_key(key, entry)
                if pattern is not None:
                    regexes.append(_Regex(number, key, secondary, pattern[0], pattern[1]))
                    continue
                automaton, word = (exact, key) if entry.case_sensitive else (folded, key.lower())
                slot = (number, secondary, entry.whole_words, key, len(word))
                if word in automaton:
                    automaton.get(word).append(slot)
                else:
                    automaton.add_word(word, [slot])
    for automaton in (folded, exact):
        if len(automaton):
            automaton.make_automaton()
    ids = [entry.id or str(number) for number, entry in enumerate(entries)]
    return LoreIndex(
        book=book,
        entries=list(entries),
        folded=folded if len(folded) else None,
        exact=exact if len(exact) else None,
        regexes=regexes,
        depths=depths,
        max_depth=max(depths, default=book.scan_depth),
        constant=constant,
        timed=timed,
        ids=ids,
        numbers={entry_id: n for n, entry_id in enumerate(ids)},
        enabled=sum(1 for entry in entries if entry.enabled),
        plain=frozenset(
            n
            for n, e in enumerate(entries)
            if e.enabled
            and not (e.constant or e.secondary_keys or e.delay or e.sticky or e.cooldown)
            and e.probability >= 100
        ),
    )


async def check_patterns(book: Lorebook | None, *, where: str = "lorebook") -> None:
    """Every regex key of ``book`` compiled within the bounds of :mod:`core.patterns`, else a 400 naming the key."""
    if book is None:
        return
    for number, entry in enumerate(book.entries):
        for name, keys in (("keys", entry.keys), ("secondary_keys", entry.secondary_keys)):
            for position, key in enumerate(keys):
                pattern = _regex_key(key, entry)
                if pattern is not None:
                    field = f"{where}.entries[{number}].{name}[{position}]"
                    await patterns.compile_pattern(pattern[0], field=field, flags=pattern[1])


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


# (entry, secondary) → matched keys, by the message they were found in (0: the latest).
_Hits = dict[tuple[int, bool], dict[str, int]]


# Texts whose keys are kept per book, at most, and the longest kept.
_SCANS_KEPT = 512
_LONGEST_SCAN_KEPT = 20_000


def _scan(index: LoreIndex, text: str, message: int, hits: _Hits) -> None:
    """The plain keys in ``text`` (message ``message``), one pass per automaton, or as found when the same text
    was scanned lately."""
    scans = index.scans
    keys = scans.get(text)
    if keys is None:
        keys = _keys_in(index, text)
        if len(text) <= _LONGEST_SCAN_KEPT:
            scans[text] = keys
            if len(scans) > _SCANS_KEPT:
                scans.popitem(last=False)
    for number, secondary, key in keys:
        found = hits.setdefault((number, secondary), {})
        if key not in found or found[key] > message:
            found[key] = message


def _keys_in(index: LoreIndex, text: str) -> list[tuple[int, bool, str]]:
    """The plain keys ``text`` holds, as (entry, secondary, key), in the order they end in it."""
    keys: list[tuple[int, bool, str]] = []
    for automaton, haystack in ((index.folded, text.lower() if index.folded is not None else ""), (index.exact, text)):
        if automaton is None:
            continue
        size = len(haystack)
        for end, slots in automaton.iter(haystack):
            # The characters around the match, for whole-word keys: a word character on either side rules it out.
            joined = end + 1 < size and _word(haystack[end + 1])
            for number, secondary, whole, key, length in slots:
                if whole:
                    if joined:
                        continue
                    start = end - length + 1
                    if start > 0 and _word(haystack[start - 1]):
                        continue
                keys.append((number, secondary, key))
    return keys


async def _scan_regexes(
    index: LoreIndex, texts: Sequence[str], hits: _Hits, warnings: list[str], *, recursion: bool = False
) -> None:
    """The regex keys in ``texts`` (the messages, latest first; or activated content, found as message -1),
    each searched under :data:`REGEX_SECONDS`."""
    for item in index.regexes:
        depth = index.depths[item.entry]
        for offset, text in enumerate(texts):
            message = -1 if recursion else offset
            if message > depth:
                break
            try:
                compiled = await patterns.compile_pattern(item.pattern, field="key", flags=item.flags)
                found = await patterns.search(compiled, text, seconds=REGEX_SECONDS)
            except BadRequest as exc:
                warnings.append(f"lorebook entry {_label(index.entries[item.entry])}: key {item.key!r} {exc.message}")
                break
            except (TimeoutError, MemoryError):
                warnings.append(
                    f"lorebook entry {_label(index.entries[item.entry])}: the regex key {item.key!r} took more than "
                    f"{REGEX_SECONDS} s to search the chat and was taken as not matching; simplify it."
                )
                break
            if found:
                slot = hits.setdefault((item.entry, item.secondary), {})
                if item.key not in slot or slot[item.key] > message:
                    slot[item.key] = message
                break


def _label(entry: LoreEntry) -> str:
    return repr(entry.name) if entry.name else repr(entry.id)


def _roll(seed: str, entry_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{entry_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100


def _secondary_ok(entry: LoreEntry, found: dict[str, int] | None) -> bool:
    if not entry.secondary_keys:
        return True
    matched = len(found) if found else 0
    logic = entry.selective_logic
    if logic == "and_any":
        return matched > 0
    if logic == "and_all":
        return matched >= len(set(entry.secondary_keys))
    if logic == "not_any":
        return matched == 0
    return matched < len(set(entry.secondary_keys))  # not_all


async def activate(
    index: LoreIndex,
    texts: Sequence[str],
    *,
    turn: int,
    seed: str,
    budget: int,
    count: Callable[[str], int],
    tokenizer: str,
    ratio: float = 1.0,
    state: LoreState | None = None,
    substitute: Callable[[str], str] | None = None,
    message_overhead: int = 4,
) -> LoreResult:
    """The entries of ``index``'s book that the turn is given.

    ``texts`` are the latest message first, then the ones before it (as far as the deepest scan reaches).
    ``turn`` is the conversation's user turn (the one being answered, from 1), ``state`` its timed effects
    so far (None: a conversation without any, such as a ``/v1`` request), ``seed`` what the probability rolls
    are seeded with, ``budget`` the tokens lore may use here (the book's, or less when the window is short).
    ``substitute`` fills templates in the content; ``count`` counts tokens with the turn's ``tokenizer``, and
    ``ratio`` is the conversation's correction of that count when it is an estimate.
    """
    book, entries = index.book, index.entries
    result = LoreResult()
    state = dict(state or {})
    hits: _Hits = {}
    scanned = texts[: index.max_depth + 1]
    for message, text in enumerate(scanned):
        if text:
            _scan(index, text, message, hits)
    if index.regexes:
        await _scan_regexes(index, scanned, hits, result.warnings)

    decided: dict[int, tuple[bool, str]] = {}
    matched: dict[int, list[str]] = {}

    plain, depths, ids = index.plain, index.depths, index.ids

    def consider(number: int) -> None:
        if number in decided:
            return
        entry = entries[number]
        primary = hits.get((number, False)) or {}
        depth = depths[number]
        keyed = [k for k, at in primary.items() if at <= depth]
        if number in plain and not (state and ids[number] in state):
            # Its keys alone decide: found within its scan depth, it is given (the common case, made short).
            if keyed:
                matched[number] = keyed
                decided[number] = (True, "recursion" if max(map(primary.__getitem__, keyed)) < 0 else "key")
            return
        if not entry.enabled:
            return
        # Found only in activated content (message -1), not in the chat.
        recursion = bool(keyed) and all(primary[k] < 0 for k in keyed)
        if keyed:
            matched[number] = keyed
        held = state.get(ids[number])
        sticky = held is not None and held[0] >= turn and not entry.constant
        if not (entry.constant or keyed or sticky):
            return
        if entry.delay and turn < entry.delay:
            decided[number] = (False, "delay")
            return
        if held is not None and held[0] < turn <= held[1]:
            decided[number] = (False, "cooldown")
            return
        if keyed or entry.constant:
            secondary = hits.get((number, True))
            if secondary is not None:
                secondary = {k: at for k, at in secondary.items() if at <= depth}
            if keyed and not _secondary_ok(entry, secondary):
                if sticky:
                    decided[number] = (True, "sticky")
                else:
                    decided[number] = (False, "secondary_logic")
                return
            if entry.probability < 100 and not sticky and _roll(seed, ids[number]) >= entry.probability:
                decided[number] = (False, "probability")
                return
            reason = "constant" if entry.constant else ("recursion" if recursion else "key")
            decided[number] = (True, reason)
            return
        decided[number] = (True, "sticky")

    # Only what could activate is looked at: entries with a key found, constant ones, those a timed effect holds.
    for number in sorted({n for n, _ in hits} | set(index.constant) | {index.numbers.get(i, -1) for i in state} - {-1}):
        consider(number)
    if book.recursive:
        fresh = [n for n, (on, _) in decided.items() if on]
        for _ in range(MAX_RECURSION):
            if not fresh:
                break
            before = set(decided)
            contents = [entries[n].content for n in fresh]
            for text in contents:
                _scan(index, text, -1, hits)
            if index.regexes:
                await _scan_regexes(index, contents, hits, result.warnings, recursion=True)
            for number in sorted({n for n, _ in hits} - before):
                consider(number)
            fresh = [n for n in decided if n not in before and decided[n][0]]

    # Groups: of the activated entries sharing one, the highest insertion_order stays, then the lowest id.
    winners: dict[str, int] = {}
    for number, (on, _) in decided.items():
        group = entries[number].group
        if on and group:
            best = winners.get(group)
            if best is None or _rank(entries[number], number) < _rank(entries[best], best):
                winners[group] = number
    for number, (on, _) in list(decided.items()):
        group = entries[number].group
        if on and group and winners[group] != number:
            decided[number] = (False, "group")

    counts = index.tokens.get(tokenizer)
    if counts is None:  # made once per tokenizer, not a list the book's size on every turn
        counts = index.tokens[tokenizer] = [None] * len(entries)
    texts_of: dict[int, str] = {}

    def tokens_of(number: int) -> int:
        entry = entries[number]
        text = entry.content
        if substitute is not None and "{{" in text:
            text = texts_of[number] = substitute(text)
            raw = count(text)
        else:
            known = counts[number]
            raw = counts[number] = count(text) if known is None else known
        if ratio != 1.0:
            raw = int(raw * ratio + 0.999)
        return raw + (message_overhead if entry.position == "at_depth" else 0)

    # The budget: constant entries first, then the highest insertion_order, while it holds.
    active = sorted(
        (n for n, (on, _) in decided.items() if on),
        key=lambda n: (not entries[n].constant, *_rank(entries[n], n)),
    )
    kept: list[int] = []
    spent = 0
    full = False
    cost: dict[int, int] = {}
    for number in active:
        cost[number] = tokens = tokens_of(number)
        if full or spent + tokens > budget:
            full = True
            decided[number] = (False, "budget")
            continue
        kept.append(number)
        spent += tokens

    kept.sort(key=lambda n: (entries[n].insertion_order, entries[n].id or ""))
    system_parts: list[str] = []
    for number in kept:
        entry = entries[number]
        text = texts_of.get(number, entry.content)
        if entry.position == "at_depth":
            result.messages.append((entry.depth, entry.role, text))
        else:
            system_parts.append(text)
        result.ids.append(ids[number])
    result.system = "\n\n".join(p for p in system_parts if p)
    result.tokens = spent

    # The timed effects carried to the next turn: kept entries start (or extend) their sticky and cooldown.
    if index.timed or state:
        for number in kept:
            entry = entries[number]
            if (entry.sticky or entry.cooldown) and decided[number][1] != "sticky":
                until = turn + entry.sticky
                state[ids[number]] = [until, until + entry.cooldown]
        result.state = {k: v for k, v in state.items() if v[1] >= turn}

    def explain() -> list[LoreDecision]:
        decisions = []
        for number in sorted(set(decided) | set(matched)):
            entry = entries[number]
            on, reason = decided.get(number, (False, "secondary_logic"))
            decisions.append(
                LoreDecision(
                    id=ids[number],
                    name=entry.name,
                    activated=on,
                    reason=reason,
                    matched=matched.get(number, []),
                    tokens=cost[number] if number in cost else tokens_of(number),
                )
            )
        return decisions

    result.explain = explain
    return result


def _rank(entry: LoreEntry, number: int) -> tuple[int, str]:
    return (-entry.insertion_order, entry.id or f"{number:08d}")
