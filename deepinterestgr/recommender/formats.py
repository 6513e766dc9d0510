"""The records every backbone's format shares: a trained model's metadata, an SFT example, an item's text.

The formats themselves (prompts for beam search, SFT examples) are in `backbones/`, one per backbone,
with the same calls (`backbones.compact.CompactFormat`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from deepinterestgr.recommender.vocab import SIDVocab


META_FILE = "recommender.json"


@dataclass
class RecommenderMeta:
    """What a trained model folder needs besides its weights: how its prompts and SID tokens are built."""

    backbone: str
    sizes: list[int]
    vocab_offset: int
    max_items: int
    template: str | None = None
    windows_per_user: int = 0
    # Catalog rows with an item token of their own (sft.item_tokens; 0 = none): token `vocab.size + row`.
    item_tokens: int = 0
    # Weight of the item head's log-probability in every ranking (sft.item_head; 0 = SID log-probability only).
    item_weight: float = 0.0
    # Models in the folder (sft.members), member k in `model/members/<k>/` (runs before 2026-12 kept member 0 in `model/`).
    members: int = 1
    # One more model distilled from the members (sft.distill), in `model/student/`: it serves in their place.
    distilled: bool = False

    @property
    def vocab(self) -> SIDVocab:
        return SIDVocab(tuple(self.sizes), self.vocab_offset)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "RecommenderMeta":
        return cls(**json.loads(raw))


@dataclass
class Example:
    """One SFT example: the loss covers tokens from `loss_start` on (earlier tokens are context), except
    tokens at or above `read_only_from` (item tokens: read, never generated; 0 = none)."""

    ids: list[int]
    loss_start: int
    read_only_from: int = 0


@dataclass
class ItemText:
    """What the item-alignment tasks read for one catalog row."""

    row: int
    title: str
    descriptors: list[str]
