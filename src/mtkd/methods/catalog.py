"""What a method is, read from the registry: its paper, what it reads of the teachers, how many
teachers it takes, what it trains, and its options with their types and defaults (the docs'
methods table and `mtkd methods` are made from this, so they cannot drift from the code)."""

from __future__ import annotations

import typing
from typing import Any

import yaml
from pydantic_core import PydanticUndefined

from mtkd.methods.base import METHODS, Method


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    args = typing.get_args(annotation)
    if args:
        inner = " | ".join(_type_name(a) for a in args)
        return f"list[{inner}]" if typing.get_origin(annotation) is list else inner
    return "none" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def method_options_table(cls: type[Method]) -> list[dict[str, str]]:
    """Each option: its YAML key, type, default ('required' when it has none) and description."""
    rows = []
    for name, field in cls.Options.model_fields.items():
        pattern = next((m.pattern for m in field.metadata if getattr(m, "pattern", None)), None)
        kind = pattern.strip("^$()").replace("|", " | ") if pattern else _type_name(field.annotation)
        default = "required" if field.default is PydanticUndefined else _shown(field.default)
        rows.append({"option": field.alias or name, "type": kind, "default": default,
                     "description": field.description or ""})  # fmt: skip
    return rows


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def describe_method(name: str) -> dict[str, Any]:
    cls = METHODS[name]
    return {
        "name": name,
        "paper": cls.paper,
        "reads": ", ".join(cls.reads) or "nothing",
        "teachers": "none" if name == "none" else ("1" if cls.max_teachers == 1 else "any number"),
        "adapted teachers": "yes" if cls.needs_logits else "no",
        "trains": cls.trains or "nothing",
        "origin": METHODS.origin(name) or "mtkd",
        "options": method_options_table(cls),
    }


def describe_methods() -> list[dict[str, Any]]:
    return [describe_method(name) for name in METHODS.names()]


def yaml_block(name: str) -> str:
    """The `transfer` block that configures the method with every option at its default (required
    ones shown as `...`, to be filled in)."""
    entry: dict[str, Any] = {"name": name}
    for field_name, field in METHODS[name].Options.model_fields.items():
        key = field.alias or field_name
        entry[key] = "..." if field.default is PydanticUndefined else field.default
    text = yaml.safe_dump({"transfer": {"methods": [entry]}}, sort_keys=False, default_flow_style=False)
    return text.replace("'...'", "...")
