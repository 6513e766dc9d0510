"""Text clean-up shared by the loaders: catalogs carry HTML, CSS and odd whitespace."""

from __future__ import annotations

import html
import re

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_STYLE = re.compile(r"<(style|script)\b.*?</\1>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
# Stray CSS rules left behind by scraped product pages: `.caption { font-family: ... }`.
_CSS_RULE = re.compile(r"[\w.#:>-]*\s*\{[^{}]*:[^{}]*\}")
_SPACE = re.compile(r"\s+")


def text_fields(record: dict) -> dict[str, str]:
    """The cleaned title, description and brand of a raw item record (absent fields are empty)."""
    return {field: clean_text(record.get(field)) for field in ("title", "description", "brand")}


def clean_text(value: object) -> str:
    """Strip HTML comments, tags and entities; join lists; collapse whitespace."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(part) for part in value)
    text = str(value)
    text = _STYLE.sub(" ", _COMMENT.sub(" ", text))
    text = html.unescape(_TAG.sub(" ", text))
    text = _CSS_RULE.sub(" ", text)
    return _SPACE.sub(" ", text).strip()
