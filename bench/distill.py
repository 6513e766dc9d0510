"""One model distilled from a run's SFT members (`sft.members` > 1) against the members ranked together, on the
same users: can one model's serving cost keep the ensemble's quality?

    python bench/distill.py --run bench/out/office/seed0/default [--weights 0,3] [--out distill.jsonl]

The student is trained as member 0 was (the same seed, examples, order, item-token dropout, weight average and
early stopping on the sft stage's sampled validation users, every `sft.eval_every` epochs), with loss = the SFT loss + w x KD, where KD is the
KL divergence from the members' per-token distribution (the geometric mean of their softmaxes, renormalised, at
every labelled SID position) to the student's, plus `sft.item_head` x the same on the item head (over the
item-token rows, at each item's first SID code). w = 0 trains member 0 again: the same-run baseline. The
members only read (eval mode, no dropout); each student step runs every member forward once more. Then all
validation and test users are ranked as evaluate ranks them (beam `evaluate.beam_width`, the item head's
weight). Prints one JSON line per weight as it ends (also appended to `--out`), with the members' own figures
from the run's evaluate report beside it. One process, no Ray: a benchmark of a candidate, not a stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from deepinterestgr.config import load_config
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import load_model
from deepinterestgr.recommender.backbones.base import IGNORE
from deepinterestgr.recommender.inputs import sft_inputs, split_rows
from deepinterestgr.recommender.model import trainable_state
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.sft_loop import (average_weights, averaged, drop_item_tokens, epoch_plan, epoch_seed,
                                                 first_code_positions, item_head_loss, optimizer_and_schedule, validation_ranks, weight_average)
from deepinterestgr.storage.runstore import RunStore


def mean_distribution(logits: list[torch.Tensor]) -> torch.Tensor:
    """Log-probabilities of the renormalised geometric mean of several models' softmaxes (rows: positions)."""
    return F.log_softmax(torch.stack([F.log_softmax(z.float(), -1) for z in logits]).mean(0), -1)


def kl(teacher: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(teacher || student), the teacher given as log-probabilities."""
    return (teacher.exp() * (teacher - F.log_softmax(student_logits.float(), -1))).sum(-1).mean()


def distillation_loss(student_logits: torch.Tensor, teachers: list[torch.nn.Module], batch: dict, vocab, item_head: float):
    """KD on the SID positions (whole vocabulary) plus `item_head` x KD on the item head (item-token rows)."""
    labels, ids = batch["labels"], batch["input_ids"]
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # logits only: no teacher loss to compute
        teacher_logits = [t(**inputs).logits[:, :-1] for t in teachers]
    labelled = labels[:, 1:] != IGNORE
    loss = kl(mean_distribution([z[labelled] for z in teacher_logits]), student_logits[:, :-1][labelled])
    if item_head:
        first = first_code_positions(ids, labels, vocab)
        items = slice(vocab.size, None)
        loss = loss + item_head * kl(mean_distribution([z[first][:, items] for z in teacher_logits]),
                                     student_logits[:, :-1][first][:, items])
    return loss


def student(run: str, weight: float) -> dict:
    # The run's own config (its stage hashes) to read it; one member's to train the student.
    store = RunStore(load_config(f"{run}/config.yaml", [f"storage.uri={run}"]))
    cfg = load_config(f"{run}/config.yaml", [f"storage.uri={run}", "sft.members=1"])
    s = cfg.sft
    data = sft_inputs(cfg, store)
    teachers = load_model(store, "sft")
    teachers = [m.eval().requires_grad_(False) for m in getattr(teachers, "members", [teachers])]
    if len(teachers) < 2 or s.backbone != "compact":
        raise SystemExit(f"distill: {run} must hold a compact model with sft.members > 1 (it has {len(teachers)} {s.backbone})")
    backbone = backbones.get(s.backbone)
    model, vocab, _ = backbone.build(s, data.catalog.trie.sizes, cfg.seed, items=len(data.catalog.codes), item_rows=data.item_rows)
    examples, groups = [e for _, e in data.grouped], np.array([g for g, _ in data.grouped])
    optimizer, scheduler = optimizer_and_schedule(model, s, len(epoch_plan(examples, groups, s, epoch_seed(cfg.seed, 0, 0))))
    average, trie = weight_average(model, s), data.catalog.trie
    best, stale, best_state, best_epoch, began = -1.0, 0, None, -1, time.perf_counter()
    for epoch in range(s.epochs):
        seed = epoch_seed(cfg.seed, epoch, 0)
        model.train()
        item_drop = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        for indices in epoch_plan(examples, groups, s, seed):
            batch = backbone.training_batch([examples[i] for i in indices.tolist()], data.fmt.pad_id, s.pack_tokens)
            out = model(**{**batch, "input_ids": drop_item_tokens(batch["input_ids"], vocab, s.item_token_dropout, item_drop)})
            loss = out.loss + s.item_head * item_head_loss(out.logits, batch["input_ids"], batch["labels"], vocab)
            if weight:
                loss = loss + weight * distillation_loss(out.logits, teachers, batch, vocab, s.item_head)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average_weights(average, model, s.ema_decay)
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
