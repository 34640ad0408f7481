"""The context builder: the one place a turn's messages are assembled, within the model's token budget.

Contract section 13. The budget is the model's window less the answer's reserve (``max_tokens``, else
:data:`~runtime.chat.tokens.ANSWER_RESERVE`). It is filled by priority:

1. never dropped: the persona's rendered system prompt, the client's system text and tools, and the turn's own
   messages (on ``/v1`` the whole conversation the client sent). When these alone exceed the budget the turn is
   refused (:class:`~core.errors.ContextOverflow`) before any provider is called;
2. the lore and memory tiers (:class:`Extra` sections a caller adds, each within its own budget), then the
   persona's example messages;
3. the conversation's summary;
4. earlier turns of a stored conversation, newest first and whole (a user message with the answers after it),
   while they fit. They are read newest first and only as far as the budget reaches
   (:meth:`ConversationStore.window`), with the token counts stored beside each message, so a turn never
   re-reads or re-tokenizes the whole conversation.

What was decided is the :class:`ContextAccount`, which render answers and each stored answer keeps.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import attrgetter
from typing import Any, Protocol

import msgspec

from core.errors import ContextOverflow
from personas.models import Persona
from personas.template import fill_names
from providers import ChatMessage, ToolSpec
from runtime.chat.conversations import Conversation, ConversationStore, WindowRow
from runtime.chat.tokens import (
    ANSWER_RESERVE,
    ESTIMATE,
    MESSAGE_OVERHEAD,
    Tokenizer,
    calibrated,
    context_window_for,
    image_tokens,
    tokenizer_for,
)

__all__ = [
    "SUMMARY_AT",
    "SUMMARY_HEADING",
    "SUMMARY_KEEPS",
    "Built",
    "ContextAccount",
    "ContextBuilder",
    "Extra",
    "Section",
    "TierSource",
]

# How the summary is introduced in the system text.
SUMMARY_HEADING = "Summary of the conversation so far (earlier turns are not shown):"
# Summaries are asked for ahead of need and in steps (contract section 13: what falls out is summarized). Once
# the turns no summary covers fill SUMMARY_AT of the history's room (or no longer fit), the next summary
# covers all but the newest SUMMARY_KEEPS of that room. The turns of the next exchanges grow into the room it
# frees, so until they fill it again every stored turn is either sent or in the summary, and a summary is
# written once per quarter of the room's worth of new turns rather than after every turn.
SUMMARY_KEEPS = 0.65
SUMMARY_AT = 0.9
# System texts whose token count is kept (the oldest counted goes first).
_COUNTED = 1024

_tokens = attrgetter("tokens")
_role = attrgetter("role")
_message = attrgetter("message")


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """One part of the context: its kind (system, tools, lore, memory, examples, summary, history, message),
    its tokens and how many items (messages, tools, entries) it holds."""

    kind: str
    tokens: int
    items: int


class ContextAccount(msgspec.Struct, frozen=True, kw_only=True):
    """What a turn was given (render's ``context``; each stored answer keeps it)."""

    window: int
    budget: int
    used: int
    tokenizer: str
    sections: list[Section]
    dropped_turns: int
    lore_ids: list[str] = msgspec.field(default_factory=list)
    memory_ids: list[str] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class Extra:
    """A tier a caller adds between the never-dropped parts and the summary (lore, memory).

    ``system`` is text for a system section after the persona's prompt; ``messages`` are placed ``depth``
    messages before the latest (each with its own depth). ``tokens`` is what it costs, counted by the caller
    within its own budget. ``ids`` are what it was made of, for the account.
    """

    kind: str
    tokens: int
    system: str = ""
    messages: tuple[tuple[int, ChatMessage], ...] = ()
    items: int = 0
    ids: tuple[str, ...] = ()


class TierSource(Protocol):
    """A tier made from what the turn's latest messages say (a persona's lorebook, a user's memories): the
    builder reads the stored turns once, then hands the latest ``depth + 1`` texts (the newest first), the
    tokens left, and the turn's way of counting them to ``make``; ``budget`` is the most it takes."""

    depth: int
    budget: int

    async def make(
        self, texts: list[str], left: int, count: Callable[[str], int], ratio: float, tokenizer: str
    ) -> Extra | None: ...


@dataclass
class Built:
    """A turn's context: the system text and messages to send, and the account of how they were chosen."""

    system: str
    # How much of ``system`` is the persona's own prompt: the prefix providers are asked to cache.
    persona_chars: int
    messages: list[ChatMessage]
    account: ContextAccount
    tokenizer: Tokenizer
    # Tokens of the turn's last message, stored with it; None when the turn was sent without counting them (later
    # turns then count the stored message by its size).
    message_tokens: int | None
    # Tokens counted for everything sent, by the estimate (before the conversation's correction): what the
    # provider's reported input tokens are compared with.
    estimated_input: int
    # The oldest stored message sent (its seq), and whether older ones, not covered by the summary, were left out.
    oldest_sent_seq: int | None = None
    # Whether a new summary is due (:data:`SUMMARY_AT`), and where it ends: it covers the stored messages
    # before this seq, the first of the oldest turn sent among the newest :data:`SUMMARY_KEEPS` of the
    # history's room (None: no turn fitted, and it covers everything stored).
    summary_due: bool = False
    summarize_before_seq: int | None = None
    # The newest stored message the history walk could read: a retry reads no further.
    newest_read_seq: int | None = None
    uncovered: bool = False
    # Whether anything could be dropped on a retry (history, summary, examples, extras).
    droppable: int = 0
    extras: list[Extra] = field(default_factory=list)
    # The lore and memory tiers' makers, with what they decided (render's ``lore`` and ``memories``).
    lore: TierSource | None = None
    memory: TierSource | None = None


def _message_tokens(message: ChatMessage, count: Any, model: str) -> int:
    tokens = MESSAGE_OVERHEAD + (count(message.content) if message.content else 0)
    for call in message.tool_calls or ():
        tokens += count(call.name) + count(call.arguments)
    return tokens + _image_tokens(message, model)


def _image_tokens(message: ChatMessage, model: str) -> int:
    # By the image's size, not its data URL's length: a picture is not text to the model.
    return sum(image_tokens(image, model) for image in message.images) if message.images else 0


def _tool_tokens(tool: ToolSpec, count: Any) -> int:
    return count(tool.name) + count(tool.description) + count(msgspec.json.encode(tool.parameters).decode())


def window_of(persona: Persona, model: str, default: int) -> int:
    """The persona's ``context_window``, else the table's figure for ``model``, else ``default``."""
    return persona.model_settings.context_window or context_window_for(model) or default


class ContextBuilder:
    """Builds each turn's context; one per pipeline."""

    def __init__(self, conversations: ConversationStore, *, default_window: int, history_messages: int) -> None:
        self.conversations = conversations
        self.default_window = default_window
        self.history_messages = history_messages
        # The system text's tokens by tokenizer and text: a persona's rendered prompt is the same turn after turn,
        # and counting it exactly costs ~10 µs or more each time.
        self._counted: dict[tuple[str, str], int] = {}

    def _system_tokens(self, tokenizer: Tokenizer, system: str, ratio: float) -> int:
        key = (tokenizer.name, system)
        raw = self._counted.get(key)
        if raw is None:
            raw = self._counted[key] = tokenizer.count(system)
            if len(self._counted) > _COUNTED:
                del self._counted[next(iter(self._counted))]
        return raw if ratio == 1.0 else int(raw * ratio + 0.999)

    async def build(
        self,
        persona: Persona,
        model: str,
        *,
        own_system: str,
        client_system: Sequence[str],
        tools: Sequence[ToolSpec],
        messages: Sequence[ChatMessage],
        conversation: Conversation | None,
        max_tokens: int | None,
        message_field: str = "message",
        extras: Sequence[Extra] = (),
        lore: TierSource | None = None,
        memory: TierSource | None = None,
        cut: int = 0,
        exact: bool = False,
        until_seq: int | None = None,
        user_name: str = "the user",
    ) -> Built:
        """The turn's context within ``model``'s budget, less ``cut`` tokens (a retry after a provider said the
        request was too long). ``exact`` counts every part even when a cheap bound shows it fits (render).
        ``until_seq`` bounds the stored messages read (a retry reads what the first try could, not the question
        stored since). ``user_name`` fills ``{{user}}`` in the persona's example messages."""
        window = window_of(persona, model, self.default_window)
        reserve = max_tokens or persona.model_settings.max_tokens or ANSWER_RESERVE
        budget = window - reserve - cut
        if budget <= 0:
            raise ContextOverflow(
                f"`max_tokens` ({reserve}) leaves no room in the model's context window of {window} tokens: "
                "ask for fewer tokens, or raise the persona's `model_settings.context_window`.",
                field="max_tokens",
                details={"part": "max_tokens", "overshoot": -budget + 1, "budget": window, "tokens": reserve},
            )
        system = "\n\n".join([own_system, *client_system]).strip() if client_system else own_system
        persona_chars = len(own_system.lstrip()) if client_system else len(system)
        tokenizer = tokenizer_for(model)
        ratio = 1.0
        if not tokenizer.exact and conversation is not None:
            ratio = calibrated(conversation.token_ratio)
        raw = tokenizer.count
        if ratio == 1.0:
            count = raw
        else:

            def count(text: str) -> int:
                return int(raw(text) * ratio + 0.999)

        # A turn without a stored conversation and nothing else to choose (/v1, a conversation's first turn):
        # when the whole request's UTF-8 size (a bound on its tokens) and the lore's and memory's own budgets fit,
        # it is sent as it is without being tokenized, with those tiers as they would be chosen with every token
        # counted (each gets its own budget either way).
        shown = _examples(persona, user_name)
        if conversation is None and not extras and not exact and not shown:
            sources = [source for source in (lore, memory) if source is not None]
            size = _size(system) + MESSAGE_OVERHEAD * len(messages)
            pictures = 0
            for message in messages:
                size += _message_size(message)
                pictures += _image_tokens(message, model)
            for tool in tools:
                size += _size(tool.name) + _size(tool.description) + len(msgspec.json.encode(tool.parameters))
            if size + pictures + sum(source.budget for source in sources) <= budget:
                return await self._unweighed(
                    system, persona_chars, messages, sources, size, pictures, window, budget, tokenizer, lore, memory
                )

        system_tokens = self._system_tokens(tokenizer, system, ratio) if system else 0
        tools_tokens = sum(_tool_tokens(t, count) for t in tools)
        each = [_message_tokens(m, count, model) for m in messages]
        message_tokens = sum(each)
        fixed = system_tokens + tools_tokens + message_tokens
        if fixed > budget:
            parts = {message_field: message_tokens, "system": system_tokens, "tools": tools_tokens}
            part = max(parts, key=lambda p: parts[p])
            overshoot = fixed - budget
            raise ContextOverflow(
                f"The request needs {fixed} tokens before any earlier turn, over the budget of {budget} "
                f"(the model's window of {window} less {reserve} for the answer) by {overshoot}; `{part}` "
                f"alone is {parts[part]} tokens. Send less in `{part}`, or use a persona or model with a "
                "larger `context_window`.",
                field=part,
                details={"part": part, "overshoot": overshoot, "budget": budget, "tokens": parts[part]},
            )
        sections = [Section(kind="system", tokens=system_tokens, items=1 if system else 0)]
        if tools:
            sections.append(Section(kind="tools", tokens=tools_tokens, items=len(tools)))
        left = budget - fixed
        droppable = 0

        # The stored turns that could fit, newest first, read once: lore scans the latest of them for its keys.
        rows: list[WindowRow] = []
        more = False
        newest: int | None = None
        if conversation is not None and self.history_messages > 0:
            rows, more = await self.conversations.window(
                conversation.id,
                after_seq=conversation.summary_covers_seq or 0 if conversation.summary else 0,
                budget=int(left / ratio) + 1,
                limit=self.history_messages,
                until_seq=2**62 if until_seq is None else until_seq,
            )
            newest = rows[0].seq if rows else 0

        # Lore, then memory: each tier fits its own budget, or is left out.
        kept: list[Extra] = []
        sources = [source for source in (lore, memory) if source is not None]
        if sources:
            # The latest texts, newest first, as far back as the deepest scan: the turn's own, then stored ones.
            reach = max(source.depth for source in sources) + 1
            scanned = [m.content for m in reversed(messages) if m.content and m.role != "tool"][:reach]
            scanned.extend(r.content for r in rows[: reach - len(scanned)])
            made: list[Extra] = []
            room = left
            for source in sources:
                extra = await source.make(scanned, room, raw, ratio, tokenizer.name)
                if extra is not None:
                    made.append(extra)
                    room -= extra.tokens
            extras = (*made, *extras)
        for extra in extras:
            if extra.tokens <= left:
                kept.append(extra)
                left -= extra.tokens
                droppable += extra.tokens
                sections.append(Section(kind=extra.kind, tokens=extra.tokens, items=extra.items))

        # Example messages, whole, when they fit.
        examples: list[ChatMessage] = []
        if shown:
            example_messages = [ChatMessage(role=role, content=content) for role, content in shown]  # type: ignore[arg-type]
            cost = sum(_message_tokens(m, count, model) for m in example_messages)
            if cost <= left:
                examples = example_messages
                left -= cost
                droppable += cost
                sections.append(Section(kind="examples", tokens=cost, items=len(examples)))

        summary = ""
        if conversation is not None and conversation.summary:
            cost = int((conversation.summary_tokens or 0) * ratio + 0.999) + MESSAGE_OVERHEAD
            if cost <= left:
                summary = conversation.summary
                left -= cost
                droppable += cost
                sections.append(Section(kind="summary", tokens=cost, items=1))

        history: list[ChatMessage] = []
        oldest: int | None = None
        mark: int | None = None
        uncovered = due = False
        dropped = 0
        if conversation is not None and self.history_messages > 0:
            fitted, spent, uncovered, mark = _fit(rows, more, left, ratio, int(left * SUMMARY_KEEPS))
            due = uncovered or (spent > left * SUMMARY_AT and mark is not None and mark != fitted[-1].seq)
            if fitted:
                history = list(map(_message, reversed(fitted)))
                oldest = fitted[-1].seq
                kept_turns = list(map(_role, fitted)).count("user")
                sections.append(Section(kind="history", tokens=spent, items=len(history)))
                left -= spent
                droppable += spent
            else:
                kept_turns = 0
            dropped = max(conversation.user_turns - kept_turns, 0)
        sections.append(Section(kind="message", tokens=message_tokens, items=len(messages)))

        tiers = "\n\n".join(e.system for e in kept if e.system)
        tail = [s for s in (tiers, f"{SUMMARY_HEADING}\n{summary}" if summary else "") if s]
        if tail:
            system = "\n\n".join([system, *tail]) if system else "\n\n".join(tail)
        sent = [*examples, *history, *messages]
        _place_at_depth(sent, kept)
        used = budget - left
        return Built(
            system=system,
            persona_chars=persona_chars,
            messages=sent,
            account=ContextAccount(
                window=window,
                budget=budget,
                used=used,
                tokenizer=tokenizer.name,
                sections=sections,
                dropped_turns=dropped,
                lore_ids=[i for e in kept if e.kind == "lore" for i in e.ids],
                memory_ids=[i for e in kept if e.kind == "memory" for i in e.ids],
            ),
            tokenizer=tokenizer,
            message_tokens=each[-1] if each else 0,
            estimated_input=int(used / ratio),
            oldest_sent_seq=oldest,
            summary_due=due,
            summarize_before_seq=mark,
            newest_read_seq=newest,
            uncovered=uncovered,
            droppable=droppable,
            extras=kept,
            lore=lore,
            memory=memory,
        )

    async def _unweighed(
        self,
        system: str,
        persona_chars: int,
        messages: Sequence[ChatMessage],
        sources: list[TierSource],
        size: int,
        pictures: int,
        window: int,
        budget: int,
        tokenizer: Tokenizer,
        lore: TierSource | None,
        memory: TierSource | None,
    ) -> Built:
        """The context of a request whose UTF-8 ``size``, images (``pictures`` tokens) and tiers' budgets fit
        ``budget``: everything goes."""
        estimated = int(size / 3.5 + 0.999) + pictures
        sections: list[Section] = []
        kept: list[Extra] = []
        if sources:
            reach = max(source.depth for source in sources) + 1
            scanned = [m.content for m in reversed(messages) if m.content and m.role != "tool"][:reach]
            room = budget - size - pictures
            for source in sources:
                extra = await source.make(scanned, room, tokenizer.count, 1.0, tokenizer.name)
                if extra is not None and extra.tokens <= room:
                    kept.append(extra)
                    room -= extra.tokens
                    sections.append(Section(kind=extra.kind, tokens=extra.tokens, items=extra.items))
        sections.append(Section(kind="message", tokens=estimated, items=len(messages)))
        sent = list(messages)
        tiers = "\n\n".join(e.system for e in kept if e.system)
        if tiers:
            system = f"{system}\n\n{tiers}" if system else tiers
        _place_at_depth(sent, kept)
        added = sum(e.tokens for e in kept)
        return Built(
            system=system,
            persona_chars=persona_chars,
            messages=sent,
            account=ContextAccount(
                window=window,
                budget=budget,
                used=estimated + added,
                tokenizer=ESTIMATE.name if not tokenizer.exact else tokenizer.name,
                sections=sections,
                dropped_turns=0,
                lore_ids=[i for e in kept if e.kind == "lore" for i in e.ids],
                memory_ids=[i for e in kept if e.kind == "memory" for i in e.ids],
            ),
            tokenizer=tokenizer,
            message_tokens=None,
            estimated_input=estimated + added,
            droppable=added,
            extras=kept,
            lore=lore,
            memory=memory,
        )


def _place_at_depth(sent: list[ChatMessage], kept: list[Extra]) -> None:
    """The tiers' at-depth messages into ``sent``, each that many messages from its end, the deepest first."""
    placed = sorted(((depth, m) for e in kept for depth, m in e.messages), key=lambda p: -p[0])
    for depth, message in placed:
        sent.insert(max(len(sent) - depth, 0), message)


def _examples(persona: Persona, user_name: str) -> list[tuple[str, str]]:
    """The persona's example messages as (role, content), sent after the lore and before the summary, with
    ``{{char}}`` and ``{{user}}`` (or ``{{persona_name}}`` and ``{{user_name}}``) filled.

    A ``system`` example (narration in a card's example dialogue) is not sent: providers take system text only
    in the system prompt, and a message of ours in the user's or the persona's voice would put words in one's
    mouth. Narration belongs in the persona's prompt or scenario."""
    if not persona.example_messages:  # most personas: nothing to do on every turn
        return []
    return [
        (m.role, fill_names(m.content, persona_name=persona.name, user_name=user_name))
        for m in persona.example_messages
        if m.role != "system"
    ]


def _size(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode())


def _message_size(message: ChatMessage) -> int:
    content = message.content
    size = (len(content) if content.isascii() else len(content.encode())) if content else 0
    for call in message.tool_calls:
        size += _size(call.name) + _size(call.arguments)
    return size


def _fit(
    rows: list[WindowRow], more: bool, left: int, ratio: float, keep: int
) -> tuple[list[WindowRow], int, bool, int | None]:
    """The newest rows (newest first) that make whole turns within ``left``: each turn a user message and the
    answers after it (a conversation's opening greeting is a turn of its own). Returns those rows, their tokens,
    whether stored messages were left out (``more``: the walk stopped before the start), and the first seq of
    the oldest turn within ``keep`` tokens (else of the newest turn; None when none fits).

    By the running totals of the rows' costs (never negative, so they only grow): what fits is found by
    bisection and the turns' edges near it, not by a walk over every row."""
    if not rows:
        return rows, 0, more, None
    costs: Iterable[int] = map(_tokens, rows)
    if ratio != 1.0:  # an estimated count, corrected for the conversation (a model's own: the stored counts)
        costs = (int(tokens * ratio + 0.999) for tokens in costs)
    sums = list(accumulate(costs))
    last = len(rows) - 1
    end = _edge(rows, bisect_right(sums, left) - 1, last, more)
    if end < 0:
        return [], 0, True, None
    edge = _edge(rows, bisect_right(sums, keep, hi=end + 1) - 1, last, more)
    if edge < 0:  # the newest turn alone is past ``keep``
        edge = _edge_after(rows, end, last, more)
    kept = rows[: end + 1] if end < last else rows
    return kept, sums[end], more or end < last, rows[edge].seq


def _ends_turn(rows: list[WindowRow], index: int, last: int, more: bool) -> bool:
    """Whether row ``index`` (newest first) is a turn's last: its user message, or the conversation's first."""
    return rows[index].role == "user" or (index == last and not more)


def _edge(rows: list[WindowRow], index: int, last: int, more: bool) -> int:
    """The last row of a whole turn at or before ``index``; -1 when none is."""
    while index >= 0 and not _ends_turn(rows, index, last, more):
        index -= 1
    return index


def _edge_after(rows: list[WindowRow], end: int, last: int, more: bool) -> int:
    """The newest turn's last row, which lies at or before ``end`` (itself the end of a turn)."""
    index = 0
    while index < end and not _ends_turn(rows, index, last, more):
        index += 1
    return index
