import math

import numpy as np
import pytest

from deepinterestgr.metrics import metrics_by_popularity, popularity_groups, ranking_metrics, ranks_from_scores, target_ranks


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
