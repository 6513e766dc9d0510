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
        out[f"hr@{k}"] = float((found & (ranks < k)).mean())
        out[f"ndcg@{k}"] = float(ndcg_gains(ranks, k).mean())
    return out


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@K (one target: 1 / log2(rank + 2) inside the top K, else 0) from 0-based ranks."""
    if k <= 0:
        raise ValueError(f"K must be positive, got {k}")
    ranks = np.asarray(ranks)
    hit = (ranks >= 0) & (ranks < k)
    return np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2.0), 0.0)


def ratio_interval(numerators: Sequence[np.ndarray], denominators: Sequence[np.ndarray], samples: int, seed: int,
                   level: float = 0.95) -> dict[str, float]:
    """A paired bootstrap interval of mean(numerator) / mean(denominator): per-user figures of two models
    on the same users, one array per run (seed); the ratio is of the means over every run's users.

    Each resample draws one set of user positions for every run: runs on one split (a real dataset's seeds
    change only training) share their users, so a user's figures move together, as they must; runs with
    their own users are independent, and averaging their i-th users gives independent draws all the same.
    Both models' figures of a user are drawn together, so what the two models share does not widen it.
    """
    if not numerators or len(numerators) != len(denominators):
        raise ValueError(f"ratio_interval needs one denominator per numerator run, got {len(numerators)} and {len(denominators)}")
    sizes = {len(a) for a in (*numerators, *denominators)}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"ratio_interval needs every run to hold the same users, got user counts {sorted(sizes)}")
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"ratio_interval needs samples >= 1 and 0 < level < 1, got {samples} and {level}")
    num = np.mean(np.asarray(numerators, dtype=np.float64), axis=0)
    den = np.mean(np.asarray(denominators, dtype=np.float64), axis=0)
    if den.sum() <= 0:
        raise ValueError("ratio_interval: the denominator model scores 0 on every user")
    rng, ratios = np.random.default_rng(seed), []
    for start in range(0, samples, 64):  # in chunks: samples x users indices at once would not fit for large catalogs
        draws = rng.integers(0, len(num), size=(min(64, samples - start), len(num)))
        ratios.append(num[draws].sum(axis=1) / np.maximum(den[draws].sum(axis=1), np.finfo(np.float64).tiny))
    ratios = np.concatenate(ratios)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return {"ratio": float(num.sum() / den.sum()), "low": float(low), "high": float(high), "level": level, "samples": samples}


def popularity_groups(target_counts: np.ndarray, groups: int) -> list[tuple[int, int, np.ndarray]]:
    """Users split by how often their target occurs in training: (lowest count, highest count, user mask) per group.

    Edges are count quantiles of the targets; users whose targets share a count stay in one group, so
    there can be fewer groups than asked (a catalog whose targets all occur alike gives one).
    """
    target_counts = np.asarray(target_counts)
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    if target_counts.size == 0:
        return []
    edges = np.unique(np.quantile(target_counts, np.linspace(0, 1, groups + 1)[1:-1], method="lower"))
    group_of = np.searchsorted(edges, target_counts, side="left")
    out = []
    for g in np.unique(group_of):
        mask = group_of == g
        out.append((int(target_counts[mask].min()), int(target_counts[mask].max()), mask))
    return out


def metrics_by_popularity(ranks: dict[str, np.ndarray], target_counts: np.ndarray, groups: int,
                          ks: Sequence[int] = (5, 10)) -> list[dict]:
    """Each model's HR@K / NDCG@K per target-popularity group (tail first): where a model wins or loses."""
    rows = []
    for low, high, mask in popularity_groups(target_counts, groups):
        row = {"target_count": f"{low}" if low == high else f"{low}-{high}", "users": int(mask.sum())}
        row["models"] = {name: ranking_metrics(r[mask], ks) for name, r in ranks.items()}
        rows.append(row)
    return rows
