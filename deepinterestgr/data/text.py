"""Text clean-up shared by the loaders: catalogs carry HTML, CSS and odd whitespace."""

from __future__ import annotations

import html
import re

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_STYLE = re.compile(r"<(style|script)\b.*?</\1>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean_text(value: object) -> str:
    """Strip HTML comments, tags and entities; join lists; collapse whitespace."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(part) for part in value)
    text = str(value)
    text = _STYLE.sub(" ", _COMMENT.sub(" ", text))
    text = html.unescape(_TAG.sub(" ", text))
    return _SPACE.sub(" ", text).strip()
