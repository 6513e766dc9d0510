"""The SASRec baseline alone on a config's split: its grid chosen on validation, then K seeds, at what cost.

    python bench/sasrec.py --config configs/ml100k.yaml [--members 4] [--set evaluate.sasrec.grid={}] [--out bench/out/sasrec_ml100k]

Runs the config's prepare stage (reused when `--out` already holds it), fits `evaluate.sasrec` as the
evaluate stage does (every grid point with the config's seed, the best validation NDCG@10 kept, then
seeds seed+1..seed+K-1), and prints one JSON line: each grid point's validation NDCG@10, epochs and
seconds, the chosen settings, and for every ensemble size 1..K HR/NDCG@5/10 on the validation users
(training items -> validation item) and on the test users (training and validation items -> test
item). A quick way to check the baseline against published SASRec figures without training GR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ray

from deepinterestgr.baselines.sasrec import ensemble_ranks, fit_sasrec_members
from deepinterestgr.config import load_config
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender.sequences import build_sequences, split_histories
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import pipeline
from ray_jobs.common import start_ray
from ray_jobs.evaluate import ray_fit_map


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the dataset's run config")
    parser.add_argument("--members", type=int, help="SASRec seeds ranked together (default: evaluate.sasrec.members, else sft.members)")
    parser.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--out", help="run folder for the prepare stage (default bench/out/sasrec_<config name>)")
    args = parser.parse_args()
    out = Path(args.out or f"bench/out/sasrec_{Path(args.config).stem}").resolve()
    cfg = load_config(args.config, [*args.set, f"storage.uri={out}", "pipeline.stages=[prepare]"])
    members = args.members or cfg.evaluate.sasrec.members or cfg.sft.members
    start_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    store = RunStore(cfg)
    store.save_config(cfg)
    pipeline.run(cfg, store)
    item_ids = sorted(store.read_table("prepare", "items").column("item_id").to_pylist())
    seqs = build_sequences(store.read_table("prepare", "interactions"), item_ids)
    fit = fit_sasrec_members(seqs.train, seqs.valid, len(item_ids), cfg.evaluate.sasrec, cfg.evaluate.sasrec.grid, members,
                             cfg.seed, label="bench: SASRec", fit_map=ray_fit_map(cfg.evaluate.sasrec.cpus_per_fit))
    splits = {name: split_histories(seqs, split)[1:] for name, split in (("validation", "valid"), ("test", "test"))}
    by_members = {size: {} for size in range(1, members + 1)}
    for name, (histories, targets) in splits.items():
        sized = ensemble_ranks(fit.models, histories, targets)
        for size in by_members:
            by_members[size][name] = {k: round(v, 4) for k, v in ranking_metrics(sized[size - 1], cfg.evaluate.ks).items()}
    print(json.dumps({"bench": "sasrec", "config": args.config, "seed": cfg.seed, "users": len(seqs.train), "items": len(item_ids),
                      "grid": fit.grid, "chosen": {k: getattr(fit.shape, k) for k in cfg.evaluate.sasrec.grid},
                      "fits": fit.fits, "seconds": round(fit.seconds, 1), "members": by_members}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
