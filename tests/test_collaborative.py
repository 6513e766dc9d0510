"""Collaborative item vectors: built from training interactions only, they place co-bought items together."""

import numpy as np
import pyarrow as pa

from deepinterestgr.tokenizer.collaborative import cooccurrence_vectors, match_scale, sasrec_vectors, training_sequences

ITEMS = [f"i{k}" for k in range(8)]


def _interactions(rows):
    users, items, times, splits = zip(*rows)
    return pa.table({"user_id": list(users), "item_id": list(items), "timestamp": list(times), "split": list(splits)})


def _rows(valid_item: str, test_item: str):
    # Users buy within two groups ({i0..i3}, {i4..i7}); the last two interactions are held out.
    rng = np.random.default_rng(0)
    rows = []
    for user in range(40):
        group = ITEMS[:4] if user % 2 else ITEMS[4:]
        for t in range(6):
            rows.append((f"u{user}", group[int(rng.integers(4))], float(t), "train"))
        rows.append((f"u{user}", valid_item, 6.0, "valid"))
        rows.append((f"u{user}", test_item, 7.0, "test"))
    return rows


def test_held_out_interactions_cannot_change_the_vectors():
    a = training_sequences(_interactions(_rows("i0", "i1")), ITEMS)
    b = training_sequences(_interactions(_rows("i7", "i5")), ITEMS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == 40
    assert all(len(s) == 6 for s in a), "only the training rows"
    va = cooccurrence_vectors(a, len(ITEMS), dim=4, window=3, seed=0)
    vb = cooccurrence_vectors(b, len(ITEMS), dim=4, window=3, seed=0)
    np.testing.assert_array_equal(va, vb)


def test_co_bought_items_are_closer_than_items_of_the_other_group_and_same_seed_same_vectors():
    sequences = training_sequences(_interactions(_rows("i0", "i1")), ITEMS)
    vectors = cooccurrence_vectors(sequences, len(ITEMS), dim=4, window=3, seed=0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    same = [similarity[i, j] for i in range(8) for j in range(8) if i != j and (i < 4) == (j < 4)]
    other = [similarity[i, j] for i in range(8) for j in range(8) if (i < 4) != (j < 4)]
    assert min(same) > max(other)
    np.testing.assert_array_equal(vectors, cooccurrence_vectors(sequences, len(ITEMS), dim=4, window=3, seed=0))


def test_items_never_bought_in_training_get_zero_vectors_and_scale_matches_the_text():
    sequences = [np.array([0, 1, 0, 1, 2])]
    vectors = cooccurrence_vectors(sequences, 5, dim=2, window=2, seed=0)
    assert not vectors[3:].any()
    text = np.random.default_rng(1).normal(scale=0.05, size=(5, 16))
    scaled = match_scale(vectors, text)
    assert abs(scaled.std(axis=0).mean() - text.std(axis=0).mean()) < 1e-6


def test_sasrec_item_table_ignores_held_out_interactions_separates_the_groups_and_repeats_per_seed():
    from deepinterestgr.config import SASRecShape

    cfg = SASRecShape(hidden_size=16, layers=1, heads=1, dropout=0.0, epochs=30, eval_every=5, patience=10, lr=1e-2)
    a = training_sequences(_interactions(_rows("i0", "i1")), ITEMS)
    b = training_sequences(_interactions(_rows("i7", "i5")), ITEMS)
    vectors = sasrec_vectors(a, len(ITEMS), cfg, seed=0)
    np.testing.assert_array_equal(vectors, sasrec_vectors(b, len(ITEMS), cfg, seed=0))
    assert vectors.shape == (len(ITEMS), 16)
    # The output table scores next items: items bought by the same users end up on the same side.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    same = np.mean([similarity[i, j] for i in range(8) for j in range(8) if i != j and (i < 4) == (j < 4)])
    other = np.mean([similarity[i, j] for i in range(8) for j in range(8) if (i < 4) != (j < 4)])
    assert same > other + 0.2
    assert not sasrec_vectors([np.array([0, 1, 0, 1, 2])], 5, cfg, seed=0)[3:].any()
