"""The best NDCG@10 any recommender can reach on a synthetic catalog: its generator's own posterior.

    python bench/bayes_bound.py --config configs/default.yaml --seeds 3

The synthetic generator (`deepinterestgr/data/synthetic.py`) gives each user 1..`max_user_interests`
interests and walks a hidden "current interest" through them: each step draws a uniformly random item
with probability `noise` (the current interest stays), otherwise keeps the current interest with
probability `stickiness` (or draws one of the user's interests anew) and draws a uniform item of that
interest's pool. With the catalog's item -> interests table, the next-item distribution given a history
is a hidden Markov model's forecast, averaged over every interest set the user might hold (uniform
count, then uniform set, as drawn), weighted by how well each set explains the history. Ranking by it is
Bayes-optimal: no model trained on these users can beat it in expectation, so a model's NDCG@10 over
this bound says how much of the learnable signal it has, and a target ratio between two models above
bound / weaker model cannot be met on that catalog.

Two figures per split (the same leave-last-out split and users as `dig prepare`):
- `bayes`: the posterior above, what the data allow;
- `known_interests`: the same forecast told each user's true interest set (not learnable from the
  data: an upper bound on the upper bound).

Prints one JSON line: per seed and mean, validation and test NDCG@10 and HR@10 of both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepinterestgr.config import load_config  # noqa: E402
from deepinterestgr.data.filtering import ORDER_COLUMN, kcore, leave_last_out  # noqa: E402
from deepinterestgr.data.registry import load_raw  # noqa: E402


class Catalog:
    """The generator's tables for one seed: item pools per interest, every candidate interest set."""

    def __init__(self, item_truth: list[dict], items: list[str], max_interests: int):
        self.index = {item: row for row, item in enumerate(items)}
        interests = sorted({name for row in item_truth for name in row["interests"]})
        self.interest_index = {name: k for k, name in enumerate(interests)}
        pools = np.zeros((len(interests), len(items)))
        for row in item_truth:
            if row["item_id"] in self.index:
                for name in row["interests"]:
                    pools[self.interest_index[name], self.index[row["item_id"]]] = 1.0
        # P(item | interest): uniform over the pool; an empty pool (all its items filtered out) never emits.
        self.emission = pools / np.maximum(pools.sum(1, keepdims=True), 1.0)
        sets = [c for k in range(1, max_interests + 1) for c in itertools.combinations(range(len(interests)), k)]
        self.members = np.zeros((len(sets), max_interests), dtype=np.int64)
        self.mask = np.zeros((len(sets), max_interests))
        for s, chosen in enumerate(sets):
            self.members[s, : len(chosen)] = chosen
            self.mask[s, : len(chosen)] = 1.0
        sizes = self.mask.sum(1)
        per_size = {k: sum(1 for c in sets if len(c) == k) for k in range(1, max_interests + 1)}
        self.log_prior = np.log(np.array([1.0 / max_interests / per_size[int(n)] for n in sizes]))


def forecast(cat: Catalog, members: np.ndarray, mask: np.ndarray, log_prior: np.ndarray, history: list[int],
             noise: float, stickiness: float) -> np.ndarray:
    """P(next item | history), the interest-set posterior folded in; rows of `members`/`mask` are candidate sets."""
    items = cat.emission.shape[1]
    sizes = mask.sum(1, keepdims=True)
    belief = mask / sizes
    loglik = log_prior.copy()

    def moved(b):
        return stickiness * b + (1.0 - stickiness) * mask / sizes

    for item in history:
        ahead = moved(belief)
        emit = cat.emission[members, item] * mask
        from_interest = (ahead * emit).sum(1)
        with np.errstate(divide="ignore"):  # a set that cannot explain an item (no noise) drops out: log 0
            loglik += np.log(noise / items + (1.0 - noise) * from_interest)
        posterior = noise / items * belief + (1.0 - noise) * ahead * emit
        total = posterior.sum(1, keepdims=True)
        belief = np.divide(posterior, total, out=np.zeros_like(posterior), where=total > 0)
    weights = np.exp(loglik - loglik.max())
    weights /= weights.sum()
    per_interest = np.zeros(cat.emission.shape[0])
    np.add.at(per_interest, members.ravel(), (weights[:, None] * moved(belief)).ravel())
    return noise / items + (1.0 - noise) * per_interest @ cat.emission


def expected_hits(scores: np.ndarray, targets: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k with ties broken uniformly at random, in expectation: the forecast gives every item
    of a pool the same probability, and counting those ties against the target would understate the bound.
    A target with b items above it and t tied with it (itself included) sits at each of ranks b..b+t-1
    with probability 1/t."""
    target = scores[np.arange(len(targets)), targets][:, None]
    better = (scores > target).sum(1)
    tied = (scores == target).sum(1)
    # gain_below[p]: the summed NDCG gains of ranks 0..p-1.
    gain_below = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    first, end = np.minimum(better, k), np.minimum(better + tied, k)
    return float(((end - first) / tied).mean()), float(((gain_below[end] - gain_below[first]) / tied).mean())


def bound(config: str, seed: int, overrides: list[str]) -> dict:
    cfg = load_config(config, [f"seed={seed}", *overrides])
    if cfg.data.loader != "synthetic":
        raise SystemExit(f"{config}: data.loader is {cfg.data.loader!r}; the bound needs the synthetic generator's process")
    s = cfg.data.synthetic
    raw = load_raw(cfg.data, seed)
    interactions, _ = kcore(raw.interactions, cfg.data.kcore)
    ordered = interactions.append_column(ORDER_COLUMN, pa.array(np.arange(interactions.num_rows)))
    split = leave_last_out(ordered).to_pylist()
    items = sorted({row["item_id"] for row in split})
    cat = Catalog(raw.extras["item_truth"].to_pylist(), items, s.max_user_interests)
    truth = {row["user_id"]: [cat.interest_index[n] for n in row["interests"]] for row in raw.extras["user_truth"].to_pylist()}
    sequences: dict[str, list[tuple[str, int]]] = {}
    for row in split:
        sequences.setdefault(row["user_id"], []).append((row["split"], cat.index[row["item_id"]]))
    scores = {name: {"valid": [], "test": []} for name in ("bayes", "known_interests")}
    targets = {"valid": [], "test": []}
    for user, rows in sequences.items():
        seq = [item for _, item in rows]
        for name, end in (("valid", len(seq) - 2), ("test", len(seq) - 1)):
            if rows[end][0] != name:
                continue
            history, target = seq[:end], seq[end]
            targets[name].append(target)
            scores["bayes"][name].append(forecast(cat, cat.members, cat.mask, cat.log_prior, history, s.noise, s.stickiness))
            own = np.array([truth[user]])
            scores["known_interests"][name].append(
                forecast(cat, own, np.ones_like(own, dtype=float), np.zeros(1), history, s.noise, s.stickiness))
    out = {}
    for name, by_split in scores.items():
        for split_name, rows in by_split.items():
            hr, ndcg = expected_hits(np.stack(rows), np.array(targets[split_name]))
            prefix = "val_" if split_name == "valid" else ""
            out[f"{name}_{prefix}ndcg@10"] = round(ndcg, 4)
            out[f"{name}_{prefix}hr@10"] = round(hr, 4)
    out["users"] = {k: len(v) for k, v in targets.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--set", action="append", default=[], help="config override (key=value)")
    args = parser.parse_args()
    per_seed = {seed: bound(args.config, seed, args.set) for seed in range(args.seeds)}
    keys = [k for k in per_seed[0] if k != "users"]
    mean = {k: round(float(np.mean([r[k] for r in per_seed.values()])), 4) for k in keys}
    print(json.dumps({"bench": "bayes_bound", "config": args.config, "seeds": list(per_seed), "mean": mean,
                      "per_seed": per_seed}))


if __name__ == "__main__":
    main()
