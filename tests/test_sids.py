import json

import numpy as np
import torch
import pytest

from deepinterestgr.errors import DataError
from deepinterestgr.tokenizer.sids import (
    SIDTrie,
    add_extra_level,
    collision_rate,
    level_stats,
    load_external_sids,
    reassign_last_level,
)
from deepinterestgr.tokenizer.text import enriched_text, interest_text


def test_collision_rate_and_level_stats_by_hand():
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 1]])
    assert collision_rate(codes) == pytest.approx(0.25)
    stats = level_stats(codes, [4, 2])
    assert stats[0]["utilisation"] == pytest.approx(0.75)  # codes 0, 1, 2 of 4
    assert stats[1]["perplexity"] == pytest.approx(np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))))


def test_extra_level_numbers_colliding_items():
    codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2]])
    out = add_extra_level(codes)
    assert out[:, -1].tolist() == [0, 1, 0, 2]
    assert collision_rate(out) == 0


def test_reassign_moves_farther_items_to_nearest_free_code():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1]])
    distances = np.array([[5.0, 0.3, 0.1, 0.9], [1.0, 0.2, 0.4, 0.5], [9, 9, 0, 9], [9, 0, 9, 9]])
    out = reassign_last_level(codes, distances)
    # item 1 is nearer to code 1 and keeps it; item 0 moves to its nearest free code (0 has 5.0, 3 has 0.9)
    assert out.tolist() == [[0, 3], [0, 1], [0, 2], [1, 1]]


def test_reassign_refuses_a_prefix_larger_than_the_codebook():
    with pytest.raises(DataError, match="share the prefix"):
        reassign_last_level(np.zeros((3, 2), dtype=int), np.zeros((3, 2)))


def test_trie_lookup_masks_and_round_trip():
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0], [1, 3, 2]])
    trie = SIDTrie.build(codes)
    for row, code in enumerate(codes):
        assert trie.lookup(code.tolist()) == row
    assert trie.lookup([0, 0, 0]) == -1 and trie.lookup([5, 0, 0]) == -1
    root = trie.children(0, torch.zeros(1, dtype=torch.long))[0]
    assert (root >= 0).tolist() == [True, True, True]
    assert (trie.children(1, root[:1])[0] >= 0).tolist() == [False, True, False, False]
    assert trie.children(2, trie.children(1, root[:1])[:, 1])[0].tolist() == [0, 1, -1]
    again = SIDTrie.from_bytes(trie.to_bytes())
    nodes = torch.tensor([[0, 1], [2, 1]])
    assert again.sizes == trie.sizes and torch.equal(again.children(1, nodes), trie.children(1, nodes))
    with pytest.raises(ValueError, match="unique"):
        SIDTrie.build(np.array([[0, 1], [0, 1]]))
    assert SIDTrie.build(codes, [8, 8, 8]).sizes == [8, 8, 8]
    assert (SIDTrie.build(codes, [8, 8, 8]).children(0, torch.zeros(1, dtype=torch.long)) >= 0).sum() == 3
    with pytest.raises(ValueError, match="do not cover"):
        SIDTrie.build(codes, [2, 8, 8])


def test_external_map_tokens_integers_and_errors(tmp_path):
    path = tmp_path / "sids.json"
    path.write_text(json.dumps({"a": ["<a_1>", "<b_2>", "<c_3>"], "b": [4, 5, 6]}))
    assert load_external_sids(path, ["b", "a"]).tolist() == [[4, 5, 6], [1, 2, 3]]
    with pytest.raises(DataError, match=r"1 catalog item\(s\) have no SID, e.g. \['z'\]"):
        load_external_sids(path, ["a", "z"])
    path.write_text(json.dumps({"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2]}))
    with pytest.raises(DataError, match=r"ragged lengths.*\['c'\]"):
        load_external_sids(path, ["a", "b", "c"])
    path.write_text(json.dumps({"a": ["<b_1>"]}))
    with pytest.raises(DataError, match="item 'a' level 0"):
        load_external_sids(path, ["a"])


def test_enriched_text_keeps_order_and_only_positive_descriptors():
    text = enriched_text({
        "title": "Tent", "description": "Two-person", "caption": "a green tent",
        "descriptors": [{"descriptor": "ultralight hiking", "label": 1}, {"descriptor": "nice", "label": 0},
                        {"descriptor": "family camping"}],
    })
    assert text == "Tent\nTwo-person\na green tent\nInterests: ultralight hiking; family camping"


def test_an_item_whose_descriptors_are_all_labelled_bad_keeps_its_most_probable_one():
    rejected = [{"descriptor": "beach days", "label": 0, "p_good": 0.2}, {"descriptor": "camping", "label": 0, "p_good": 0.4},
                {"descriptor": "", "label": 0, "p_good": 0.9}]
    assert interest_text({"descriptors": rejected}) == "camping"
    assert enriched_text({"title": "Tent", "descriptors": rejected}) == "Tent\nInterests: camping"
    kept = [*rejected, {"descriptor": "hiking", "label": 1, "p_good": 0.3}]
    assert interest_text({"descriptors": kept}) == "hiking", "with a good descriptor only the good ones count"
    assert interest_text({"descriptors": []}) == "" and interest_text({"descriptors": None}) == ""


def test_p_good_weights_every_descriptor_by_its_probability_and_normalises():
    from deepinterestgr.tokenizer.text import weighted_descriptors, weighted_mean

    item = {"descriptors": [{"descriptor": "hiking", "label": 1, "p_good": 0.9}, {"descriptor": "beach", "label": 0, "p_good": 0.1},
                            {"descriptor": "", "p_good": 1.0}]}
    assert weighted_descriptors(item) == [("hiking", 0.9), ("beach", 0.1)], "unnamed descriptors drop out, labels do not"
    assert weighted_descriptors({"descriptors": [{"descriptor": "camping"}]}) == [("camping", 1.0)]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    out = weighted_mean(vectors, np.array([0.75, 0.25, 1.0]), np.array([0, 0, 2]), rows=4)
    assert np.allclose(out[0], np.array([0.75, 0.25]) / np.hypot(0.75, 0.25))
    assert np.allclose(out[2], [0.6, 0.8]) and not out[1].any() and not out[3].any(), "rows that own nothing stay zero"


def test_text_embedder_p_good_channel_leans_to_the_likely_descriptor_with_the_real_minilm():
    from actors.embedders import TextEmbedder

    items = [{"item_id": "i1", "title": "Trail shoes", "description": "",
              "descriptors": [{"descriptor": "mountain hiking", "label": 1, "p_good": 0.95},
                              {"descriptor": "formal office wear", "label": 0, "p_good": 0.05}]},
             # mined, never labelled: p_good has nothing to weigh
             {"item_id": "i2", "title": "Tent", "description": "",
              "descriptors": [{"descriptor": "camping"}, {"descriptor": "beach days"}]},
             {"item_id": "i3", "title": "Pen", "description": "", "descriptors": []}]
    batch = {k: np.fromiter((item[k] for item in items), dtype=object, count=len(items)) for k in items[0]}
    labels = TextEmbedder("all-MiniLM-L6-v2", interests=True, interest_weights="labels")
    weighted = TextEmbedder("all-MiniLM-L6-v2", interests=True)
    by_labels = labels(dict(batch))["interest_embedding"]
    by_p_good = weighted(dict(batch))["interest_embedding"]
    alone = labels.model.encode(["mountain hiking", "formal office wear", "camping", "beach days"], normalize_embeddings=True)
    assert np.allclose(by_labels[0], alone[0], atol=1e-5), "labels: the good descriptor alone"
    assert np.isclose(np.linalg.norm(by_p_good[0]), 1.0, atol=1e-5)
    assert by_p_good[0] @ alone[0] > 0.95 and by_p_good[0] @ alone[1] > by_labels[0] @ alone[1], \
        "p_good: mostly the likely descriptor, a little of the doubtful one"
    mean_alone = (alone[2] + alone[3]) / np.linalg.norm(alone[2] + alone[3])
    assert np.allclose(by_p_good[1], by_labels[1], atol=1e-5) and not np.allclose(by_p_good[1], mean_alone, atol=1e-3), \
        "an item the label stage did not score keeps the labels channel (its descriptors encoded together)"
    assert not by_p_good[2].any() and not by_labels[2].any()
