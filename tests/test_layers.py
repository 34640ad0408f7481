"""The layout's promises, read from the code's own imports: every import points down, and each layer keeps to
its own libraries (README, "Architecture")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer and the ones below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("personas", "providers"),
    # What a user may do, and what a persona remembers of them: both below the chat turn that reads them.
    ("runtime.access", "runtime.memory", "runtime.turns"),
    ("runtime.chat",),
    ("runtime.authoring",),
    ("runtime.server",),
    ("api",),
]
PACKAGES = ("core", "personas", "providers", "runtime", "api")

# Libraries a layer must not import: the domain and the providers know nothing of HTTP serving, and the
# controllers reach storage and providers only through the runtime.
FORBIDDEN = {
    "personas": ("litestar",),
    "providers": ("litestar", "asyncpg", "redis"),
    "api": ("asyncpg", "redis", "openai", "anthropic"),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    for rank, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return rank
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    loose = [_module(p) for p in _sources() if _layer(_module(p)) is None and _module(p) not in ("runtime",)]
    # runtime/__main__.py is the command's other door and sits with the composition root.
    assert loose == ["runtime.__main__"]


def _upward(path: Path, module: str) -> list[str]:
    """The imports of ``path`` (the module ``module``) that point at a layer above its own."""
    rank = _layer(module)
    if rank is None:
        return []
    return [
        f"{path.name}:{line} imports {imported}"
        for line, imported in _imports(path)
        if (target := _layer(imported)) is not None and target > rank
    ]


def test_imports_point_down_only() -> None:
    upward = [found for path in _sources() for found in _upward(path, _module(path))]
    assert upward == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_keep_to_their_libraries(layer: str) -> None:
    crossing = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, imported in _imports(path):
            if imported.split(".")[0] in FORBIDDEN[layer]:
                crossing.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert crossing == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule itself can fail: a core module importing the runtime is found, its own layer's import is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("import core.errors\nfrom runtime.chat.turn import Turn\n", encoding="utf-8")
    assert _upward(bad, "core.db") == ["bad.py:2 imports runtime.chat.turn"]
