"""A Ray Data callable that keeps a trained recommender loaded and ranks test targets by beam search."""

from __future__ import annotations

import numpy as np

from deepinterestgr.metrics import target_ranks
from deepinterestgr.recommender.ranking import beam_items
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


class TargetRanker:
    """Adds `rank` (0-based rank of `target` in the beam, -1 = missed) and `top` (the first `top` items of
    the beam, catalog rows) to batches of prompts."""

    def __init__(self, load_model, trie_bytes: bytes, vocab: SIDVocab, pad_id: int, beam_width: int, exclude_history: bool,
                 device: str = "cpu", item_weight: float = 0.0, top: int = 5):
        self.model = load_model().to(device)
        self.trie = SIDTrie.from_bytes(trie_bytes)
        self.vocab, self.pad_id, self.beam_width, self.exclude_history = vocab, pad_id, beam_width, exclude_history
        self.item_weight, self.top = item_weight, top

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [list(p) for p in batch["prompt"]]
        history = [list(h) for h in batch["history"]] if self.exclude_history else None
        items = beam_items(self.model, prompts, self.trie, self.vocab, self.beam_width, batch_size=len(prompts), exclude=history,
                           pad_id=self.pad_id, item_weight=self.item_weight)
        batch["rank"] = target_ranks(items, batch["target"])
        batch["top"] = items[:, : self.top]
        return batch
