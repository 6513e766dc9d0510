"""Versioned prompt templates, one YAML file per version (`<name>.yaml` in this folder)."""

from __future__ import annotations

import re
from importlib import resources

import yaml

PLACEHOLDER = re.compile(r"\{(\w+)\}")


def load_template(name: str) -> dict[str, str]:
    """The templates of one version; an unknown name lists the versions that exist."""
    folder = resources.files(__name__)
    path = folder.joinpath(f"{name}.yaml")
    if not path.is_file():
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise FileNotFoundError(f"prompt template {name!r} does not exist (known: {', '.join(known)})")
    templates = yaml.safe_load(path.read_text())
    if templates.get("version") != name:
        raise ValueError(f"prompt template {name}.yaml declares version {templates.get('version')!r}")
    return templates


def fill(template: str, **parts: str) -> str:
    """A text template with its placeholders replaced; a missing part is an error naming it."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in parts:
            raise KeyError(f"prompt template needs {{{name}}}, which was not given")
        return str(parts[name])

    return PLACEHOLDER.sub(value, template)


def render(template: str, encode, **parts: str | list[int]) -> list[int]:
    """Token ids of a template: text parts go through `encode`, list parts are token ids inserted as is.

    Semantic-ID tokens are not text the tokenizer knows, so they are spliced in by id.
    """
    ids: list[int] = []
    position = 0
    for match in PLACEHOLDER.finditer(template):
        if match.start() > position:
            ids += encode(template[position : match.start()])
        value = parts[match.group(1)]
        ids += value if isinstance(value, list) else (encode(value) if value else [])
        position = match.end()
    if position < len(template):
        ids += encode(template[position:])
    return ids
