"""The label stage's similarity judge on the synthetic catalog whose descriptions only imply interests (real MiniLM)."""

import numpy as np

from deepinterestgr.config import load_config
from deepinterestgr.interests.labels import truth_match
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import label, mine, prepare


def test_similarity_judge_tells_true_interests_from_wrong_ones_and_the_labels_filter_them(ray_cluster, tmp_path):
    cfg = load_config(None, [f"storage.uri={tmp_path}", "data.synthetic.num_items=80", "data.synthetic.num_users=40",
                             "data.synthetic.interest_text=indirect", "label.judge_by=similarity"])
    store = RunStore(cfg)
    prepare.run(cfg, store)
    truth = {r["item_id"]: r["interests"] for r in store.read_table("prepare", "item_truth").to_pylist()}
    every = sorted({i for interests in truth.values() for i in interests})
    rng = np.random.default_rng(0)
    # every item: its true interests and as many it does not have, so half of all descriptors are wrong
    descriptors = {}
    for item_id, interests in truth.items():
        wrong = rng.choice([i for i in every if i not in interests], size=len(interests), replace=False).tolist()
        descriptors[item_id] = [{"descriptor": d, "confidence": 1.0, "sources": ["test"]} for d in interests + wrong]
    mine.commit_descriptors(cfg, store, descriptors, "test")

    report = label.run(cfg, store).entry.report
    assert report["judge_mode"] == "embedding similarity (all-MiniLM-L6-v2)" and report["judge"]["method"] == "similarity"
    assert 0.25 <= report["judge_positive_rate"] <= 0.75, "not degenerate"
    assert 0.35 <= report["truth"]["true_interest_rate"] <= 0.65 and report["truth"]["agreement"] >= 0.8
    kept = [truth_match(d["descriptor"], truth[r["item_id"]])
            for r in store.read_table("label", "items").to_pylist() for d in r["descriptors"] if d["label"] == 1]
    assert np.mean(kept) >= 0.7, "the classifier's labels keep mostly true interests (half of the input is wrong)"
