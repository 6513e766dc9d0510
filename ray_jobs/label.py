"""`dig label`: reward labels (RLDI) for every mined descriptor, and item quality for GRPO's reward.

A judge scores a seeded sample of (descriptor, item) pairs: an LLM with p(good), read from its
answer's log-probabilities where the backend gives them, or (`label.judge_by: similarity`) the
cosine of the item text's and the descriptor's embeddings. The threshold that best tells held-out
pairs from the same items judged against other items' descriptors turns scores into labels. A logistic
regression over MiniLM embeddings learns those labels on part of the sample, is scored on the
held-out rest, and labels every pair. On a catalog with ground truth the report also says how
often the judge's label agrees with "the descriptor is a true interest". Outputs: `label/items`
(mined items, each descriptor with `label` and `p_good`), `label/item_quality` (item_id, quality),
`label/judged` (the judged sample), `label/failures`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from actors.embedders import TextEmbedder
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.interests.labels import (agreement, choose_threshold, cosine, fit_classifier, item_quality, item_text,
                                             pair_features, truth_match)
from deepinterestgr.interests.parsing import parse_label, parse_label_probability
from deepinterestgr.interests.requests import judge_request
from deepinterestgr.interests.schemas import LABEL_SCHEMA
from deepinterestgr.interests.tables import FAILURE_SCHEMA
from deepinterestgr.prompts import load_template
from deepinterestgr.run_report import label_balance
from deepinterestgr.storage.result_cache import ResultCache
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import stage_main, to_table, up_to_date
from ray_jobs.llm_batch import cache_key, run_llm_task

STAGE = "label"
LABELLED_TYPE = pa.list_(pa.struct([("descriptor", pa.string()), ("confidence", pa.float64()), ("sources", pa.list_(pa.string())),
                                    ("label", pa.int64()), ("p_good", pa.float64())]))


@dataclass
class Labelled:
    entry: ManifestEntry
    items: pa.Table


def embed_texts(cfg: RunConfig, texts: list[str]) -> dict[str, np.ndarray]:
    """MiniLM vectors of distinct texts, on a Ray Data actor pool that keeps the encoder loaded."""
    distinct = sorted(set(texts))
    data = ray.data.from_items([{"text": t} for t in distinct]).map_batches(
        TextEmbedder, fn_constructor_kwargs={"model": cfg.label.text_encoder, "column": "text"}, batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=1))
    table = to_table(data)
    return dict(zip(table.column("text").to_pylist(), np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False))))


def _jobs(sample: list[int], mismatched: dict[int, int]) -> list[tuple[str, int, int]]:
    """(id, item's pair, descriptor's pair): each sampled pair as is, and "x<i>" for pair i's item with pair mismatched[i]'s descriptor."""
    return [(str(i), i, i) for i in sample] + [(f"x{i}", i, j) for i, j in mismatched.items()]


def judge_by_similarity(vectors: dict[str, np.ndarray], pairs: list[dict], sample: list[int],
                        mismatched: dict[int, int]) -> tuple[dict[str, float], list[dict], dict]:
    """The cosine of each judged pair's item text and descriptor vectors, keyed as `judge`'s scores."""
    jobs = _jobs(sample, mismatched)
    items = np.stack([vectors[pairs[i]["text"]] for _, i, _ in jobs])
    descriptors = np.stack([vectors[pairs[j]["descriptor"]] for _, _, j in jobs])
    scores = cosine(items, descriptors)
    return {key: float(s) for (key, _, _), s in zip(jobs, scores)}, [], {"pairs": len(jobs), "method": "similarity"}


def judge(cfg: RunConfig, store: RunStore, pairs: list[dict], sample: list[int], mismatched: dict[int, int]) -> tuple[dict[str, float], list[dict], dict]:
    """p(good) per judged pair from the LLM judge, keyed by pair index and "x<i>" (see `_jobs`)."""
    templates = load_template(cfg.label.prompts)
    jobs = _jobs(sample, mismatched)
    requests = []
    for request_id, item, descriptor in jobs:
        p = pairs[item]
        request = judge_request(templates, p["title"], p["description"], pairs[descriptor]["descriptor"], cfg.label.judge.max_prompt_tokens)
        requests.append({"id": request_id, "messages": request.messages, "truncated": request.truncated})
    k = cfg.label.top_logprobs if cfg.label.judge_logprobs else 0
    cache = ResultCache(store, STAGE, cache_key(f"judge-p{k}", cfg.label.judge, cfg.label.prompts))
    outcome = run_llm_task("judge", requests, parse_label_probability if k else parse_label, cfg.label.judge, cache, cfg.seed,
                           cfg.mine.parse_retries, cfg.mine.flush_rows, schema=LABEL_SCHEMA, top_logprobs=k)
    return {key: float(v) for key, v in outcome.values.items()}, outcome.failures, outcome.stats


def other_descriptors(pairs: list[dict], chosen: np.ndarray, seed: int) -> dict[int, int]:
    """For each chosen pair, a pair of another item whose descriptor it is judged against (calibration negatives)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in chosen.tolist():
        for _ in range(20):
            j = int(rng.integers(len(pairs)))
            if pairs[j]["item_id"] != pairs[i]["item_id"] and pairs[j]["descriptor"] != pairs[i]["descriptor"]:
                out[i] = j
                break
    return out


def truth_report(store: RunStore, pairs: list[dict], labels: dict[int, int]) -> dict | None:
    """On a catalog with ground truth (synthetic): how often the judge's label says whether a descriptor is a true interest."""
    try:
        truth = {r["item_id"]: r["interests"] for r in store.read_table("prepare", "item_truth").to_pylist()}
    except OSError:  # no ground truth: the prepare stage of a real catalog has no item_truth table
        return None
    true = {i: int(truth_match(pairs[i]["descriptor"], truth.get(pairs[i]["item_id"], []))) for i in labels}
    if not true:
        return None
    return {"pairs": len(true), "true_interest_rate": round(float(np.mean(list(true.values()))), 4),
            "agreement": round(float(np.mean([labels[i] == true[i] for i in true])), 4)}


def run(cfg: RunConfig, store: RunStore, items: ray.data.Dataset | None = None) -> Labelled:
    """Judge, learn, label, score items; skipped when inputs and config are unchanged."""
    inputs = store.inputs(("mine",))
    config_hash = cfg.section_hash("label")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return Labelled(entry, store.read_table(STAGE, "items"))
    mined = to_table(items) if items is not None else store.read_table("mine", "items")
    records = mined.to_pylist()
    pairs = [{"row": r, "k": k, "item_id": item["item_id"], "title": item.get("title") or "", "description": item.get("description"),
              "text": item_text(item.get("title") or "", item.get("description")), "descriptor": d["descriptor"]}
             for r, item in enumerate(records) for k, d in enumerate(item["descriptors"] or [])]
    if not pairs:
        raise DataError(f"label: the mine stage in {store.uri} produced no descriptors to label (see mine/failures)")

    rng = np.random.default_rng(cfg.seed)
    size = len(pairs) if cfg.label.judge_by == "similarity" else min(cfg.label.judge_sample, len(pairs))
    sample = np.array(sorted(rng.choice(len(pairs), size=size, replace=False).tolist()))
    order = np.random.default_rng(cfg.seed + 1).permutation(sample)
    holdout = np.sort(order[: max(1, int(len(order) * cfg.label.holdout))])
    with store.stage(STAGE, config_hash, inputs) as attempt:
        vectors = embed_texts(cfg, [p["descriptor"] for p in pairs] + [p["text"] for p in pairs])
        mismatched = other_descriptors(pairs, holdout, cfg.seed + 2)
        if cfg.label.judge_by == "similarity":
            scores, failures, judge_stats = judge_by_similarity(vectors, pairs, sample.tolist(), mismatched)
        else:
            scores, failures, judge_stats = judge(cfg, store, pairs, sample.tolist(), mismatched)
        judged_scores = {int(k): v for k, v in scores.items() if not k.startswith("x")}
        if len(judged_scores) < 2:
            raise DataError(f"label: the judge answered {len(judged_scores)} of {len(sample)} pairs; see the failures in the log")
        threshold, separation = choose_threshold([judged_scores[i] for i in holdout.tolist() if i in judged_scores],
                                                 [v for k, v in scores.items() if k.startswith("x")])
        judged = {i: int(p >= threshold) for i, p in judged_scores.items()}
        features = pair_features(np.stack([vectors[p["descriptor"]] for p in pairs]), np.stack([vectors[p["text"]] for p in pairs]))
        held = [i for i in holdout.tolist() if i in judged]
        held_set = set(held)
        train = [i for i in order.tolist() if i in judged and i not in held_set]
        labels = np.array([judged[i] for i in sorted(judged)])
        classifier = fit_classifier(features[train], np.array([judged[i] for i in train]), cfg.label.epochs, cfg.label.lr,
                                    cfg.label.weight_decay, cfg.seed)
        probability = classifier.probability(features)
        predicted = (probability >= 0.5).astype(int)
        for p, prob, label in zip(pairs, probability, predicted):
            records[p["row"]]["descriptors"][p["k"]].update(label=int(label), p_good=round(float(prob), 4))
        table = mined.set_column(mined.schema.get_field_index("descriptors"), "descriptors",
                                 pa.array([r["descriptors"] or [] for r in records], LABELLED_TYPE))
        quality = pa.table({"item_id": [r["item_id"] for r in records],
                            "quality": [item_quality(r["descriptors"] or []) for r in records]})
        judged_table = pa.table({
            "item_id": [pairs[i]["item_id"] for i in sorted(judged)], "descriptor": [pairs[i]["descriptor"] for i in sorted(judged)],
            "judge_p": [round(judged_scores[i], 4) for i in sorted(judged)],
            "judge_label": [judged[i] for i in sorted(judged)], "predicted": [int(predicted[i]) for i in sorted(judged)],
            "holdout": [i in held_set for i in sorted(judged)]})
        described = [q for q, r in zip(quality.column("quality").to_pylist(), records) if r["descriptors"]]
        report = {
            "pairs": len(pairs), "judge": judge_stats, "judged": len(judged),
            "judge_mode": (f"embedding similarity ({cfg.label.text_encoder})" if cfg.label.judge_by == "similarity"
                           else "answer log-probabilities" if cfg.label.judge_logprobs else "answer text"),
            "threshold": round(threshold, 4),
            "own_vs_other_items_balanced_accuracy": None if np.isnan(separation) else round(separation, 4),
            "judge_positive_rate": round(float(labels.mean()), 4),
            "classifier": "constant (the judge gave one label)" if classifier.constant is not None else "logistic regression",
            "holdout": {"pairs": len(held), **agreement(predicted[held], np.array([judged[i] for i in held]))},
            "positive_rate": round(float(predicted.mean()), 4),
            "mean_item_quality": round(float(np.mean(described)), 4) if described else 0.0,
        }
        truth = truth_report(store, pairs, judged)
        if truth is not None:
            report["truth"] = truth
        rate, degenerate = label_balance(report)
        if degenerate:
            print(f"label: the judge is degenerate (label 1 on {rate:.0%} of pairs): no agreement is claimed", file=sys.stderr)
        attempt.write_table("items", table)
        attempt.write_table("item_quality", quality)
        attempt.write_table("judged", judged_table)
        attempt.write_table("failures", pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA))
        entry = attempt.commit({"items": table.num_rows, "item_quality": quality.num_rows, "judged": len(judged)}, report)
    return Labelled(entry, table)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
