"""The one metrics module: HR@K and NDCG@K for full-ranking evaluation with one target per user."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(ranked: Sequence[Sequence[object]], targets: Sequence[object]) -> np.ndarray:
    """0-based rank of each target in its ranked list, or -1 when the list does not hold it."""
    ranks = np.full(len(targets), -1, dtype=np.int64)
    for row, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        for position, item in enumerate(items):
            if item == target:
                ranks[row] = position
                break
    return ranks


def ranks_from_scores(scores: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """0-based rank of each target among all scored items (ties count against the target).

    Counting ties against the target keeps a model that scores everything equal from looking good.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target_scores = scores[np.arange(len(target_index)), target_index]
    better_or_tied = (scores >= target_scores[:, None]).sum(axis=1) - 1
    return better_or_tied.astype(np.int64)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """HR@K and NDCG@K averaged over users, from 0-based target ranks (-1 = not retrieved)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("ranking_metrics needs at least one user")
    found = ranks >= 0
    out: dict[str, float] = {}
    for k in ks:
        if k <= 0:
            raise ValueError(f"K must be positive, got {k}")
        hit = found & (ranks < k)
        gain = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2.0), 0.0)
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(gain.mean())
    return out
