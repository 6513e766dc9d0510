"""GRPO against SFT only, from the same SFT checkpoint, over several GRPO seeds (the noise), in one run.

    python bench/grpo_bench.py --config configs/ml100k.yaml [--seeds 0 1 2] [--set grpo.epochs=3 ...]

Needs a run with committed prepare, tokenize and sft stages. For each seed it runs `dig grpo`'s
stage (committing into the run, so the last seed's model stays), then ranks every test user's target
with the SFT model and the GRPO model by the same beam search. Prints one JSON line: test HR@10 and
NDCG@10 after SFT, per GRPO seed, their mean and standard deviation, and seconds per GRPO step.
"""

import argparse
import json
import sys

import numpy as np
import ray

from deepinterestgr.config import load_config
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender.artifacts import load_catalog, load_format, load_model
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import grpo
from ray_jobs.common import start_ray


def test_metrics(store: RunStore, stage: str, beam_width: int) -> dict:
    catalog = load_catalog(store)
    fmt = load_format(store, stage, catalog)
    seqs = catalog.sequences
    users = [u for u in range(len(seqs.user_ids)) if seqs.test[u] >= 0]
    prompts = [fmt.prompt(seqs.train[u] + ([int(seqs.valid[u])] if seqs.valid[u] >= 0 else [])) for u in users]
    ranks = target_ranks(load_model(store, stage), prompts, seqs.test[users], catalog.trie, fmt.vocab, beam_width, pad_id=fmt.pad_id,
                         item_weight=fmt.item_weight)
    return {k: round(v, 4) for k, v in ranking_metrics(ranks, (10,)).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    base = load_config(args.config, args.set)
    start_ray(base)
    ray.data.DataContext.get_current().enable_progress_bars = False
    store = RunStore(base)
    out = {"bench": "grpo_vs_sft", "run": store.uri, "sft": test_metrics(store, "sft", base.evaluate.beam_width), "grpo": []}
    for seed in args.seeds:
        cfg = load_config(args.config, args.set + [f"seed={seed}"])
        report = grpo.run(cfg, store).report
        out["grpo"].append({"seed": seed, **test_metrics(store, "grpo", base.evaluate.beam_width),
                            "val_gain_ndcg@10": round(report["val_ndcg@10"] - report["sft_val_ndcg@10"], 4),
                            "kept": report["kept"], "s_per_step": round(report["s_per_step"] or 0, 3)})
    for key in ("hr@10", "ndcg@10"):
        values = [g[key] for g in out["grpo"]]
        out[f"grpo_{key}_mean"], out[f"grpo_{key}_std"] = round(float(np.mean(values)), 4), round(float(np.std(values)), 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
