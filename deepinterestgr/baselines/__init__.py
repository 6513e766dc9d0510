"""Baselines scored on the same split as the generative recommender."""
