"""The generative recommender: SID vocabulary, model factory, constrained beam search."""
