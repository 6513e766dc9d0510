import math

import numpy as np
import pytest

from deepinterestgr.metrics import ranking_metrics, ranks_from_scores, target_ranks


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
