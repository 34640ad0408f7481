"""A persona's releases: labels that point at saved versions, a rollout, and which variant a user is served."""

from __future__ import annotations

import hashlib
import re
from typing import Literal
from uuid import UUID

import msgspec

__all__ = [
    "LABEL_PATTERN",
    "NO_RELEASE",
    "PRODUCTION",
    "Release",
    "Rollout",
    "Variant",
    "in_rollout",
    "is_label",
    "rollout_bucket",
]

# How a turn's version was chosen (section 16): production (the latest save, or the version it is pinned to), the
# rollout's version, a custom label, a numbered version asked for (`@<n>`, `persona_version: n`), an unsaved draft.
Variant = Literal["production", "rollout", "label", "pinned", "draft"]

PRODUCTION = "production"
LABEL_PATTERN = r"^[a-z0-9_-]{1,32}$"
_LABEL = re.compile(LABEL_PATTERN)


def is_label(text: str) -> bool:
    return _LABEL.fullmatch(text) is not None


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """``percent`` of users (by :func:`rollout_bucket`) get ``version`` instead of production."""

    version: int
    percent: int


class Release(msgspec.Struct, frozen=True, kw_only=True):
    """What a persona's labels point at (``production`` among them only when pinned) and its rollout, if any.

    Cached with the persona itself, so a persona without labels or rollout costs nothing more to serve.
    """

    labels: dict[str, int] = msgspec.field(default_factory=dict)
    rollout: Rollout | None = None

    @property
    def empty(self) -> bool:
        return not self.labels and self.rollout is None

    def production(self, latest: int) -> int:
        """The version production serves: the pinned one, else the latest save."""
        return self.labels.get(PRODUCTION, latest)


NO_RELEASE = Release()

# Buckets per percent: a rollout's share is decided in steps of 1/100 of a percent of the hash space.
_BUCKETS = 10_000


def rollout_bucket(user_id: UUID, persona_id: UUID) -> int:
    """A user's place (0 to 9,999) for one persona: the same on every instance and every turn, and independent
    between personas, so that one user is not in every rollout's first percent."""
    digest = hashlib.blake2b(persona_id.bytes + user_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def in_rollout(user_id: UUID, persona_id: UUID, percent: int) -> bool:
    return rollout_bucket(user_id, persona_id) < percent * (_BUCKETS // 100)
