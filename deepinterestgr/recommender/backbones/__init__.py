"""The recommender's backbones, one module each, and the registry that `sft.backbone` names.

Adding a backbone: a module with a `base.Backbone` subclass, and its line in `BACKBONES` (or
`register` at run time). Nothing outside the backbone's module asks which backbone it is.
"""

from __future__ import annotations

from deepinterestgr.recommender.backbones.base import Backbone
from deepinterestgr.recommender.backbones.compact import COMPACT
from deepinterestgr.recommender.backbones.encoder_decoder import ENCODER_DECODER
from deepinterestgr.recommender.backbones.llm import LLM

BACKBONES: dict[str, Backbone] = {b.name: b for b in (COMPACT, ENCODER_DECODER, LLM)}


def register(backbone: Backbone) -> None:
    """Make `backbone` available as `sft.backbone: <backbone.name>` in this process."""
    if not backbone.name:
        raise ValueError(f"{type(backbone).__name__} has no name")
    BACKBONES[backbone.name] = backbone


def get(name: str) -> Backbone:
    """The backbone `sft.backbone` names; a ValueError that lists the known ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"sft.backbone: unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None
