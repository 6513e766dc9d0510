"""Ranking validation and test targets with the beam search: what the SFT, GRPO and evaluate stages share."""

from __future__ import annotations

import numpy as np
import torch

from deepinterestgr import metrics
from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


def beam_items(
    model: torch.nn.Module,
    prompts: list[list[int]],
    trie: SIDTrie,
    vocab: SIDVocab,
    beam_width: int,
    batch_size: int = 64,
    exclude: list[list[int]] | None = None,
    pad_id: int = 0,
    item_weight: float = 0.0,
) -> np.ndarray:
    """Each prompt's items (catalog rows) in beam order, [len(prompts), beam_width], -1 where a beam holds
    fewer items; `item_weight` as in `beam_search`."""
    out = np.full((len(prompts), beam_width), -1, dtype=np.int64)
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        result = beam_search(model, chunk, trie, vocab, beam_width=beam_width, top_k=beam_width, pad_id=pad_id,
                             exclude=exclude[start : start + batch_size] if exclude else None, item_weight=item_weight)
        for offset, items in enumerate(result.items):
            out[start + offset, : len(items)] = items
    model.train(was_training)
    return out


def target_ranks(model: torch.nn.Module, prompts: list[list[int]], targets: np.ndarray, trie: SIDTrie, vocab: SIDVocab,
                 beam_width: int, **search) -> np.ndarray:
    """0-based rank of each target among the beam's items (-1 when not retrieved); `search` as in `beam_items`."""
    return metrics.target_ranks(beam_items(model, prompts, trie, vocab, beam_width, **search), targets)
