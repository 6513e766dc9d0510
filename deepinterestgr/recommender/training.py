"""Pieces of the SFT loop that need no cluster: batching examples, ranking validation targets."""

from __future__ import annotations

import numpy as np
import torch

from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie

IGNORE = -100


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels; labels cover each example from its `loss_start`.

    The mask comes from the lengths, not from `pad_id`: an LLM's pad token is often its EOS, which
    real examples contain.
    """
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        mask[row, :n] = 1
        labels[row, example.loss_start : n] = ids[row, example.loss_start : n]
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
