"""The house's arrows point one way: each room imports only the rooms below it.

Read from the source (every `import`, at the top of a module or inside a function), so a late
import cannot hide an upward arrow."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mtkd"

# Lowest first. A room may import its own level and the levels below it, never above.
LEVELS = [
    {"errors", "version"},
    {"console", "registry", "dist", "device", "io", "_decode"},
    {"data", "models", "methods"},
    {"teachers"},
    {"engine"},
    {"deploy"},
    {"study"},
    {"api"},
    {"cli", "mtkd", "__main__"},  # entry points: the package root, the CLI
]
LEVEL = {room: i for i, rooms in enumerate(LEVELS) for room in rooms}
# Within one level, rooms that must not know each other.
APART = {("data", "models"), ("data", "methods"), ("models", "methods"), ("methods", "models")}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def _room(module: str) -> str:
    parts = module.split(".")
    return "mtkd" if len(parts) == 1 else parts[1]


def imports() -> list[tuple[str, str, str]]:
    """(importing file, its room, the room it imports) for every mtkd import in the package."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel, module = path.relative_to(SRC.parent), _module(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name == "mtkd" or name.startswith("mtkd."):
                    found.append((str(rel), _room(module), _room(name)))
    return found


def test_every_room_is_placed():
    rooms = {_room(_module(p)) for p in SRC.rglob("*.py")}
    assert rooms <= set(LEVEL), f"rooms without a level: {sorted(rooms - set(LEVEL))}"


def test_no_import_points_up():
    found = imports()
    assert len(found) > 100  # the parse saw the package
    upward = [f"{where}: {src} imports {dst}" for where, src, dst in found if LEVEL[dst] > LEVEL[src]]
    sideways = [f"{where}: {src} imports {dst}" for where, src, dst in found if (src, dst) in APART]
    assert not upward + sideways, "\n".join(upward + sideways)


def test_teachers_know_nothing_of_training():
    found = imports()
    assert any(src == "teachers" for _, src, _ in found)
    assert not [w for w, src, dst in found if src == "teachers" and dst in {"engine", "study", "api", "cli"}]
