"""Choose `sft.distill`'s weight on a run whose sft stage already trained several compact members, without
training them again: one student per weight, each ranked against the members ranked together on the same users.

    python bench/distill.py --run bench/out/office/seed0/default [--weights 0,3] [--out distill.jsonl]

Each student trains as `dig sft --set sft.distill=<w>` trains the distilled model (the same `train_epoch`, seed,
examples, order and early stopping on the stage's sampled validation users, in this process at `--threads`); w = 0
trains member 0 again: the same-run baseline. Then all validation and test users are ranked as evaluate ranks
them. Prints one JSON line per weight as it ends (also appended to `--out`), with the members' own figures from
the run's evaluate report beside it. One process, no Ray: a benchmark of a setting, not a stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from deepinterestgr.config import load_config
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import load_model
from deepinterestgr.recommender.inputs import sft_inputs, split_rows
from deepinterestgr.recommender.model import trainable_state
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.sft_loop import (averaged, epoch_plan, epoch_seed, optimizer_and_schedule, train_epoch,
                                                 validation_ranks, weight_average)
from deepinterestgr.storage.runstore import RunStore


def student(run: str, weight: float) -> dict:
    """The model distilled with `weight` from `run`'s members (w = 0: member 0 again), with its figures."""
    store = RunStore(load_config(f"{run}/config.yaml", [f"storage.uri={run}"]))
    teachers = load_model(store, "sft", members=True)
    teachers = [m.eval().requires_grad_(False) for m in getattr(teachers, "members", [teachers])]
    cfg = load_config(f"{run}/config.yaml", [f"storage.uri={run}", f"sft.distill={weight}"])
    if len(teachers) < 2 or cfg.sft.backbone != "compact":
        raise SystemExit(f"distill: {run} must hold a compact model with sft.members > 1 (it has {len(teachers)} {cfg.sft.backbone})")
    s = cfg.sft
    data = sft_inputs(cfg, store)
    model, vocab, _ = backbones.get(s.backbone).build(s, data.catalog.trie.sizes, cfg.seed, items=len(data.catalog.codes),
                                                      item_rows=data.item_rows)
    examples, groups = [e for _, e in data.grouped], np.array([g for g, _ in data.grouped])
    optimizer, scheduler = optimizer_and_schedule(model, s, len(epoch_plan(examples, groups, s, epoch_seed(cfg.seed, 0, 0))))
    average, trie = weight_average(model, s), data.catalog.trie
    best, stale, best_state, best_epoch, began = -1.0, 0, None, -1, time.perf_counter()
    for epoch in range(s.epochs):
        train_epoch(model, optimizer, scheduler, examples, groups, s, vocab, data.fmt.pad_id, epoch_seed(cfg.seed, epoch, 0),
                    average, teachers=teachers if weight else None)
        if (epoch + 1) % s.eval_every and epoch != s.epochs - 1:
            continue
        with averaged(model, average):
            ranks = validation_ranks(model, data.valid_prompts, np.array(data.valid_targets), trie, vocab, s, data.fmt.pad_id)
            ndcg = ranking_metrics(ranks, (10,))["ndcg@10"]
            if ndcg > best:
                best, stale, best_state, best_epoch = ndcg, 0, trainable_state(model), epoch
            else:
                stale += 1
        print(f"distill w={weight:g}: epoch {epoch + 1}/{s.epochs}, sampled validation NDCG@10 {ndcg:.4f} (best {best:.4f}), "
              f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        if stale >= s.patience:
            break
    model.load_state_dict(best_state, strict=False)
    model.eval()
    result = {"bench": "distill", "run": run, "weight": weight, "teachers": len(teachers), "best_epoch": best_epoch,
              "sampled_val_ndcg@10": round(best, 4), "seconds": round(time.perf_counter() - began, 1)}
    for split in ("valid", "test"):
        rows = split_rows(data.catalog, data.fmt, data.interests, split)
        ranks = target_ranks(model, [r["prompt"] for r in rows], np.array([r["target"] for r in rows]), trie, vocab,
                             cfg.evaluate.beam_width, pad_id=data.fmt.pad_id, item_weight=s.ranking_item_weight)
        result[split] = {k: round(v, 4) for k, v in ranking_metrics(ranks, (10,)).items()}
    evaluated = store.entry("evaluate")
    if evaluated is not None:
        result["members_ranked_together"] = {split: {model: {k: round(v, 4) for k, v in figures.items() if k.endswith("@10")}
                                                     for model, figures in evaluated.report.get(key, {}).items()}
                                             for split, key in (("valid", "validation"), ("test", "results"))}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run whose sft stage committed several compact members")
    parser.add_argument("--weights", type=lambda text: [float(w) for w in text.split(",")], default=[0.0, 3.0],
                        help="comma-separated KD weights, one student each (0: member 0 again, the baseline)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="append each weight's JSON line to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for weight in args.weights:
        line = json.dumps(student(args.run, weight))
        print(line, flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
