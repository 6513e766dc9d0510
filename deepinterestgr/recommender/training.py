"""Pieces of the SFT loop that need no cluster: batching, ranking validation users, metrics."""

from __future__ import annotations

import numpy as np
import torch

from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.model import PAD
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie

IGNORE = -100


def collate(sequences: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask and labels: every SID token is predicted from everything before it.

    One sequence per user carries the signal of all its next-item targets at once, which costs one
    forward pass instead of one per sliding-window sample.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
    mask = (ids != PAD).long()
    labels = ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_ranks(
    model: torch.nn.Module,
    prompts: list[list[int]],
    targets: np.ndarray,
    trie: SIDTrie,
    vocab: SIDVocab,
    beam_width: int,
    batch_size: int = 64,
    exclude: list[list[int]] | None = None,
) -> np.ndarray:
    """0-based rank of each target among the beam's items (-1 when not retrieved)."""
    ranks = np.full(len(prompts), -1, dtype=np.int64)
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = beam_width + (max(len(e) for e in exclude[start : start + batch_size]) if exclude else 0)
        result = beam_search(model, chunk, trie, vocab, beam_width=width, top_k=width)
        for offset, items in enumerate(result.items):
            row = start + offset
            if exclude:
                seen = set(exclude[row])
                items = np.array([i for i in items if i not in seen])
            hits = np.flatnonzero(items[:beam_width] == targets[row])
            ranks[row] = hits[0] if len(hits) else -1
    model.train(was_training)
    return ranks
