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


def average_weights(average: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """One step of an exponential moving average of a model's trainable parameters, in place."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in average:
                average[name].mul_(decay).add_(param.detach(), alpha=1.0 - decay)


def epoch_order(groups: np.ndarray, per_group: int, seed: int) -> np.ndarray:
    """A shuffled order of example indices for one epoch, at most `per_group` of each group (0 = all).

    With a cap, each epoch draws a fresh seeded sample per group (a user's targets), so long histories
    are covered across epochs while an epoch costs at most `per_group` examples per user.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random(len(groups))
    if per_group:
        by_group = np.lexsort((keys, groups))
        sorted_groups = groups[by_group]
        starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
        rank = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
        keep = np.zeros(len(groups), dtype=bool)
        keep[by_group[rank < per_group]] = True
        chosen = np.flatnonzero(keep)
    else:
        chosen = np.arange(len(groups))
    return chosen[np.argsort(keys[chosen], kind="stable")]
