"""Ranking validation and test targets with the beam search: what the SFT, GRPO and evaluate stages share."""

from __future__ import annotations

import numpy as np
import torch

from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


def target_ranks(
    model: torch.nn.Module,
    prompts: list[list[int]],
    targets: np.ndarray,
    trie: SIDTrie,
    vocab: SIDVocab,
    beam_width: int,
    batch_size: int = 64,
    exclude: list[list[int]] | None = None,
    pad_id: int = 0,
) -> np.ndarray:
    """0-based rank of each target among the beam's items (-1 when not retrieved)."""
    ranks = np.full(len(prompts), -1, dtype=np.int64)
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = beam_width + (max(len(e) for e in exclude[start : start + batch_size]) if exclude else 0)
        result = beam_search(model, chunk, trie, vocab, beam_width=width, top_k=width, pad_id=pad_id)
        for offset, items in enumerate(result.items):
            row = start + offset
            if exclude:
                seen = set(exclude[row])
                items = np.array([i for i in items if i not in seen])
            hits = np.flatnonzero(items[:beam_width] == targets[row])
            ranks[row] = hits[0] if len(hits) else -1
    model.train(was_training)
    return ranks
