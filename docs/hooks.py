"""mkdocs hook: the methods page's tables come from the method registry, so they cannot drift.

`<!-- methods table -->` becomes one row per method of mtkd's; `<!-- method NAME -->` becomes that
method's options (type, default, description) and the YAML block that configures it."""

from __future__ import annotations

import re

from mtkd.methods import METHODS
from mtkd.methods.catalog import describe_method, yaml_block


def methods_table() -> str:
    rows = ["| method | paper | reads of the teachers | teachers | trains with the student |", "|---|---|---|---|---|"]
    for name in METHODS.names():
        d = describe_method(name)
        if d["origin"] != "mtkd":
            continue  # plugins installed where the docs are built are not mtkd's
        rows.append(f"| [`{name}`](#{name}) | {d['paper']} | {d['reads']} | {d['teachers']} | {d['trains']} |")
    return "\n".join(rows)


def method_block(name: str) -> str:
    d = describe_method(name)
    rows = ["| option | type | default | what it does |", "|---|---|---|---|"]
    for o in d["options"]:
        kind = o["type"].replace(" | ", " / ")  # a bar would end the table's cell
        rows.append(f"| `{o['option']}` | {kind} | `{o['default']}` | {o['description']} |")
    needs = "teachers adapted to the dataset (`mtkd teacher fit`)" if d["adapted teachers"] == "yes" else "any teachers"
    head = f"*Reads:* {d['reads']}. *Teachers:* {d['teachers']}, {needs}. *Trains:* {d['trains']}."
    return f"{head}\n\n" + "\n".join(rows) + f"\n\n```yaml\n{yaml_block(name)}```\n"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001, ARG001 - mkdocs' signature
    markdown = markdown.replace("<!-- methods table -->", methods_table())
    return re.sub(r"<!-- method (\w+) -->", lambda m: method_block(m.group(1)), markdown)
