"""The one request model: every limit checked in one place, every failure one RequestError naming the fields."""

import pytest

from deepinterestgr.config import ServeConfig
from deepinterestgr.recommender.request import RecommendRequest, RequestError


def test_limits_are_checked_once_and_every_bad_field_is_named():
    limits = ServeConfig(max_k=5, max_history=2)
    assert RecommendRequest.parse({"history": ["a", "b"], "k": 5}, limits).k == 5
    with pytest.raises(RequestError) as caught:
        RecommendRequest.parse({"history": ["a", "b", "c"], "k": 6}, limits)
    assert caught.value.status == 422
    assert str(caught.value) == "history: 3 items is above the maximum of 2; k: 6 is above the maximum of 5"
    with pytest.raises(RequestError, match="^body: send exactly one of user_id or history$"):
        RecommendRequest.parse({"k": 3}, limits)
    assert RecommendRequest.parse({"user_id": "u", "k": 500}).k == 500, "without limits (a library caller) only k >= 1 holds"
