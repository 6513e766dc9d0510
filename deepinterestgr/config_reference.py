"""The configuration reference, generated from `deepinterestgr/config.py`: every key with its type,
default, bounds and the comment written above it, so the docs cannot drift from the code.

A comment block documents the field below it, and the fields that follow it without a blank line when
it names them (`batch_size` and `concurrency` under one comment); a field inherited from a base
section carries the base's comment. `dig config --reference` prints the page; docs/config-reference.md is its output.
"""

from __future__ import annotations

import ast
import json
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from deepinterestgr import config as config_module

HEADER = """# Configuration reference

Generated from `deepinterestgr/config.py` by `dig config --reference` (a test checks that this page is
current). Every key can be set in a YAML file (`--config`) or on the command line (`--set key=value`);
an unknown key or a wrong type is an error that names the key. How to use them: docs/configuration.md.
"""

BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment block that documents it."""
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    found: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        current, previous_end = "", None
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                previous_end = statement.end_lineno
                continue
            above, row = [], statement.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            name = statement.target.id
            if above:
                current = " ".join(above)
                found[(node.name, name)] = current
            elif previous_end == statement.lineno - 1 and re.search(rf"\b{name}\b", current):
                found[(node.name, name)] = current
            else:
                current = ""
            previous_end = statement.end_lineno
    return found


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _section(annotation) -> type[BaseModel] | None:
    """The config section a field holds (directly, or as the items of a list), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _default(value) -> str:
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return f"{len(value)} entr{'y' if len(value) == 1 else 'ies'} (below)"
    return f"`{json.dumps(value)}`"


def _bounds(info) -> str:
    found = [f"{sign} {getattr(m, name)}" for m in info.metadata for name, sign in BOUNDS if getattr(m, name, None) is not None]
    return ", ".join(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _comment(model: type[BaseModel], name: str, comments: dict) -> str:
    for klass in model.__mro__:
        if (klass.__name__, name) in comments:
            return comments[(klass.__name__, name)]
    return ""


def _walk(model: type[BaseModel], defaults: BaseModel, prefix: str, comments: dict, out: list[str]) -> None:
    """Rows for `model`'s keys with the defaults `defaults` holds (a section's default can differ from its class's:
    `label.judge`), then its sections."""
    rows, nested = [], []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(defaults, name)
        section = _section(info.annotation)
        if section is not None:
            if isinstance(value, list):
                nested.append((section, value[0] if value else section(), f"{key}[]."))
            else:
                nested.append((section, value if value is not None else section(), f"{key}."))
        meaning = _comment(model, name, comments) or (f"see `{key}` below" if section is not None else "")
        rows.append(f"| `{key}` | {_type(info.annotation)} | {_default(value)} | {_bounds(info)} | {_cell(meaning)} |")
    title = prefix.rstrip(".") or "top level"
    out += [f"## {title}", "", (model.__doc__ or "").strip(), "",
            "| key | type | default | bounds | meaning |", "|---|---|---|---|---|", *rows, ""]
    for section, child_defaults, child in nested:
        _walk(section, child_defaults, child, comments, out)


def reference() -> str:
    """The whole reference page as markdown."""
    out = [HEADER]
    _walk(config_module.RunConfig, config_module.RunConfig(), "", _comments(), out)
    return "\n".join(out)
