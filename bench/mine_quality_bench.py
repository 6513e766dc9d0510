"""Mining quality on the synthetic catalog, whose items carry known interests: the share of mined
items with at least one descriptor whose MiniLM cosine similarity to a true interest is >= threshold.

    python bench/mine_quality_bench.py [--config configs/default.yaml] [--items 60] [--threshold 0.6] [--set ...]

Runs prepare and mine (the configured miners; default: SmolLM2 on the local backend) in `--run`, then
prints one JSON line. For scale it also scores the item titles themselves the same way.
"""

import argparse
import json
import sys

import numpy as np
from sentence_transformers import SentenceTransformer

from deepinterestgr.config import load_config
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.weights import resolve_text_encoder
from ray_jobs import mine, prepare
from ray_jobs.common import start_ray


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config whose miners to use (default: the built-in defaults)")
    parser.add_argument("--run", default="runs/bench-mine-quality")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, [f"storage.uri={args.run}", f"mine.max_items={args.items}", "mine.user_interests=false", *args.set])
    start_ray(cfg)
    store = RunStore(cfg)
    prepare.run(cfg, store)
    mined = mine.run(cfg, store)
    truth = {r["item_id"]: r["interests"] for r in store.read_table("prepare", "item_truth").to_pylist()}
    chosen = set(mine.sample_ids(sorted(truth), cfg.mine.max_items, cfg.seed))
    rows = [r for r in mined.items.to_pylist() if r["item_id"] in chosen]
    encoder = SentenceTransformer(resolve_text_encoder("all-MiniLM-L6-v2"), device="cpu")

    def best(texts: list[str], interests: list[str]) -> float:
        if not texts:
            return 0.0
        vectors = encoder.encode(texts + interests, normalize_embeddings=True)
        return float((vectors[: len(texts)] @ vectors[len(texts):].T).max())

    mined_scores = [best([d["descriptor"] for d in r["descriptors"]], truth[r["item_id"]]) for r in rows]
    title_scores = [best([r["title"]], truth[r["item_id"]]) for r in rows]
    described = [s for s, r in zip(mined_scores, rows) if r["descriptors"]]
    print(json.dumps({
        "bench": "mine_quality", "miners": [m.name for m in cfg.mine.miners], "items": len(rows), "threshold": args.threshold,
        "items_matched": round(float(np.mean([s >= args.threshold for s in mined_scores])), 4),
        "items_with_descriptors": len(described),
        "matched_among_described": round(float(np.mean([s >= args.threshold for s in described])), 4) if described else None,
        "mean_best_similarity": round(float(np.mean(mined_scores)), 4),
        "titles_matched": round(float(np.mean([s >= args.threshold for s in title_scores])), 4),
        "failure_rate": mined.entry.report["miners"][cfg.mine.miners[0].name]["failure_rate"],
        "seconds": mined.entry.report["miners"][cfg.mine.miners[0].name]["seconds"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
