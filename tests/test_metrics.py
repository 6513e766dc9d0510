import math

import numpy as np
import pytest

from deepinterestgr.metrics import (metrics_by_popularity, ndcg_gains, popularity_groups, ranking_metrics, ranks_from_scores,
                                  ratio_interval, target_ranks)


def test_hand_computed_hr_and_ndcg():
    # ranks 0, 2, 7 and a miss: HR@5 = 2/4, NDCG@5 = (1 + 1/log2(4)) / 4; @10 adds rank 7.
    ranks = np.array([0, 2, 7, -1])
    got = ranking_metrics(ranks, ks=(5, 10))
    assert got["hr@5"] == pytest.approx(0.5)
    assert got["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert got["hr@10"] == pytest.approx(0.75)
    assert got["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(9)) / 4)


def test_target_ranks_from_ranked_lists():
    ranked = [["a", "b", "c"], ["c", "b"], ["x"]]
    assert target_ranks(ranked, ["a", "b", "z"]).tolist() == [0, 1, -1]


def test_ranks_from_scores_count_ties_against_the_target():
    scores = np.array([[0.1, 0.9, 0.5], [1.0, 1.0, 1.0]])
    assert ranks_from_scores(scores, np.array([2, 0])).tolist() == [1, 2]


def test_invalid_k_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="positive"):
        ranking_metrics(np.array([0]), ks=(0,))
    with pytest.raises(ValueError, match="at least one"):
        ranking_metrics(np.array([], dtype=int))


def test_popularity_groups_split_at_count_quantiles_and_keep_equal_counts_together():
    counts = np.array([1, 1, 1, 1, 2, 3, 5, 8, 13, 40])
    groups = popularity_groups(counts, 4)
    assert [(low, high) for low, high, _ in groups] == [(1, 1), (2, 2), (3, 5), (8, 40)]
    assert sum(int(mask.sum()) for _, _, mask in groups) == len(counts)
    assert len(popularity_groups(np.full(6, 4), 3)) == 1, "targets that all occur alike: one group"
    with pytest.raises(ValueError, match="positive"):
        popularity_groups(counts, 0)


def test_metrics_by_popularity_show_which_model_wins_on_the_tail():
    counts = np.array([1, 1, 2, 2, 50, 50, 60, 60])
    tail_model = np.array([0, 0, 0, 0, -1, -1, -1, -1])
    head_model = np.array([-1, -1, -1, -1, 0, 0, 0, 0])
    rows = metrics_by_popularity({"tail": tail_model, "head": head_model}, counts, 2, ks=(10,))
    assert [(r["target_count"], r["users"]) for r in rows] == [("1-2", 4), ("50-60", 4)]
    assert rows[0]["models"]["tail"]["hr@10"] == 1.0 and rows[0]["models"]["head"]["hr@10"] == 0.0
    assert rows[1]["models"]["head"]["ndcg@10"] == 1.0 and rows[1]["models"]["tail"]["ndcg@10"] == 0.0


def test_ndcg_gains_average_to_ndcg():
    ranks = np.array([0, 2, 7, -1, 12])
    assert ndcg_gains(ranks, 10).tolist() == pytest.approx([1.0, 0.5, 1 / math.log2(9), 0.0, 0.0])
    assert ndcg_gains(ranks, 10).mean() == pytest.approx(ranking_metrics(ranks, ks=(10,))["ndcg@10"])


def test_ratio_interval_brackets_the_ratio_and_narrows_with_more_users():
    rng = np.random.default_rng(0)

    def pair(users):
        base = ndcg_gains(rng.integers(-1, 30, size=users), 10)
        better = np.where(rng.random(users) < 0.1, 1.0, base)  # one user in ten moved to the top
        return better, base

    small, large = pair(300), pair(30_000)
    narrow = ratio_interval([large[0]], [large[1]], samples=400, seed=1)
    wide = ratio_interval([small[0]], [small[1]], samples=400, seed=1)
    for got, (num, den) in ((narrow, large), (wide, small)):
        assert got["ratio"] == pytest.approx(num.mean() / den.mean())
        assert got["low"] < got["ratio"] < got["high"]
    assert narrow["high"] - narrow["low"] < (wide["high"] - wide["low"]) / 4, "100x the users: about a tenth of the width"
    assert narrow["low"] > 1, "a model better on a tenth of the users is better beyond doubt on 30,000"
    assert ratio_interval([small[0]], [small[1]], samples=400, seed=1) == wide, "same seed, same interval"
    same = ratio_interval([small[1]], [small[1]], samples=50, seed=0)
    assert same["low"] == same["high"] == same["ratio"] == 1.0, "paired: a model against itself has no spread"


def test_ratio_interval_pools_runs_as_the_tables_do():
    a1, b1 = np.array([1.0, 0.0, 0.5, 0.0]), np.array([0.5, 0.0, 0.5, 0.5])
    a2, b2 = np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.5, 0.5, 0.0, 0.0])
    pooled = ratio_interval([a1, a2], [b1, b2], samples=20, seed=0)
    assert pooled["ratio"] == pytest.approx(np.mean([a1.mean(), a2.mean()]) / np.mean([b1.mean(), b2.mean()])), \
        "the ratio of the runs' mean figures"
    with pytest.raises(ValueError, match="same users, got user counts \\[3, 4\\]"):
        ratio_interval([a1, a2[:3]], [b1, b2], samples=20, seed=0)
    with pytest.raises(ValueError, match="one denominator per numerator run"):
        ratio_interval([a1, a2], [b1], samples=20, seed=0)
    with pytest.raises(ValueError, match="scores 0 on every user"):
        ratio_interval([a1], [np.zeros(4)], samples=20, seed=0)
