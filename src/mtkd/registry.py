"""Registries of named components (students, teachers, methods, datasets) and their plugins.

mtkd's own components register when their module is imported; a pip-installed package adds
its own through Python entry points in the groups `mtkd.students`, `mtkd.teachers`,
`mtkd.methods` and `mtkd.datasets`, read the first time a registry is asked for anything, so
a fresh process (the CLI, a study's worker, a checkpoint being loaded) finds them without the
package being imported by hand, and every command sees the same entry for a name. As timm's
`register_model` does, a name registered twice is a warning (once), and the later entry wins:
a plugin that registers a name mtkd has replaces mtkd's, in `mtkd models` and `mtkd train` alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from mtkd.errors import MtkdError, first_line

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> component. `group` is the entry-point group plugins register under."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._plugins_read = False

    def register(self, name: str, item: T, origin: str = "") -> T:
        if self._items.get(name) is item:  # a plugin module that registers itself when loaded
            return item
        if name in self._items:
            warnings.warn(
                f"mtkd: {self.kind} '{name}' is registered twice ({self._origin[name] or 'mtkd'}, then "
                f"{origin or 'mtkd'}); the later one is used",
                stacklevel=3,
            )
        self._items[name] = item
        self._origin[name] = origin
        return item

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in entry_points(group=self.group):
            try:
                item = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin is named, never fatal to others
                first = first_line(exc)
                warnings.warn(f"mtkd: cannot load {self.kind} plugin '{ep.name}' ({ep.value}): {first}",
                              stacklevel=2)  # fmt: skip
                continue
            self.register(ep.name, item, f"plugin {ep.value}")

    def get(self, name: str) -> T:
        self._read_plugins()
        if name not in self._items:
            raise MtkdError(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._items[name]

    def origin(self, name: str) -> str:
        """'' for mtkd's own, else where it came from ('plugin pkg.module:obj', 'python')."""
        self.get(name)
        return self._origin[name]

    def names(self) -> list[str]:
        self._read_plugins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._read_plugins()
        return list(self._items.items())

    def values(self) -> list[T]:
        return [v for _, v in self.items()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"


def short_doc(obj: Any) -> str:
    """The first line of an object's docstring ('' without one)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
