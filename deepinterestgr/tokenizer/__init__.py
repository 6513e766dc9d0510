"""Interest-enhanced item discretization (IEID): embeddings -> Semantic IDs and their prefix trie."""
