"""``persona-runtime personas test``: the saved suites of named personas, run as the API runs them, for CI.

It opens the same resources as ``serve`` (database, cache, providers, the chat pipeline) and runs each
suite through :meth:`runtime.authoring.service.AuthoringService.run_tests`, as an administrator named
``ci``; nothing is stored. The exit status is 0 when every test passed, 1 when one failed, 2 for a usage
error (a persona or label that does not exist, a JUnit file that cannot be written).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import msgspec

from personas.models import Caller, Persona
from personas.releases import PRODUCTION, is_label
from runtime.authoring.reports import summary, write_junit
from runtime.authoring.service import SuiteRun
from runtime.server.resources import Resources, open_resources
from runtime.server.settings import Settings

__all__ = ["CI_CALLER", "UsageError", "labelled_version", "run"]

# Who the suites run as: an administrator, so every persona's suite may run; ``{{user_name}}`` renders as ``ci``.
CI_CALLER = Caller(user_id=UUID(int=0), user_name="ci", display_name=None, is_admin=True)
# The latest save, whatever production is pinned to (a label of that name, if one is set, wins).
LATEST = "latest"


class UsageError(Exception):
    """The command cannot run as asked; the message says what to change."""


def check_label(label: str | None) -> None:
    if label is not None and not is_label(label):
        raise UsageError(f"--label {label!r}: a label is 1 to 32 of a-z, 0-9, _ and -")


async def labelled_version(resources: Resources, persona: Persona, label: str | None) -> int | None:
    """The version of ``persona`` that ``--label`` names: ``production`` (the default) the one chats get (pinned,
    else the latest save), ``latest`` the latest save (unless a label of that name is set), any other label the
    version it points at; a :class:`UsageError` for a label the persona does not have."""
    release = await resources.personas.store.release(persona.id)
    if label is None or label == PRODUCTION:
        return release.production(persona.version)
    if label in release.labels:
        return release.labels[label]
    if label == LATEST:
        return persona.version
    raise UsageError(f"persona {persona.name!r} has no label {label!r}")


async def _find(resources: Resources, names: Sequence[str], owner: str | None) -> list[Persona]:
    """The personas named, in order, each once; a :class:`UsageError` for a name that matches none (or several)."""
    store = resources.personas.store
    owner_id: UUID | None = None
    if owner is not None:
        user = await resources.accounts.get_user_by_name(owner)
        if user is None:
            raise UsageError(f"--owner: no user named {owner!r}")
        owner_id = user.id
    found: dict[UUID, Persona] = {}
    active: list[Persona] | None = None
    for name in names:
        persona = await store.find_owned(name, owner_id)
        if persona is None and owner is None:
            # Not the system's (what `personas import` creates without --owner): the only active one so named.
            active = active if active is not None else await store.list_active()
            named = [p for p in active if p.name.lower() == name.lower()]
            if len(named) > 1:
                raise UsageError(f"{len(named)} personas are named {name!r}: say whose with --owner NAME")
            persona = named[0] if named else None
        if persona is None:
            whose = f" owned by {owner!r}" if owner is not None else ""
            raise UsageError(f"no persona named {name!r}{whose}")
        found.setdefault(persona.id, persona)
    return list(found.values())


async def run(
    settings: Settings, names: Sequence[str], *, owner: str | None, label: str | None, junit: Path | None
) -> int:
    """Run the suites, print the summary (and write ``junit``); the exit status."""
    settings = msgspec.structs.replace(settings, bootstrap_admin=False, db_pool_max=min(settings.db_pool_max, 4))
    try:
        check_label(label)
        async with open_resources(settings) as resources:
            runs: list[SuiteRun] = []
            personas = await _find(resources, names, owner)
            versions = [await labelled_version(resources, p, label) for p in personas]
            for persona, version in zip(personas, versions, strict=True):
                runs.append(await resources.authoring.run_tests(CI_CALLER, persona.id, version))
    except UsageError as exc:
        print(f"persona-runtime: {exc}", file=sys.stderr)
        return 2
    print(summary(runs))
    if junit is not None:
        try:
            write_junit(junit, runs)
        except OSError as exc:
            print(f"persona-runtime: cannot write the JUnit file {str(junit)!r}: {exc.strerror}", file=sys.stderr)
            return 2
    return 1 if any(r.failed for r in runs) else 0
