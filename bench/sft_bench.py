"""SFT objective: one sequence per user (every position predicts the next SID) against one sliding-window
sample per target item, on the same model, data and seed, in one run. Prints one JSON line: tokens/s,
seconds per epoch and the time each needs to reach the best validation HR@10 of the slower one.

    python bench/sft_bench.py --run runs/ml100k [--epochs 6] [--users 200]

Needs a run with committed prepare and tokenize stages (e.g. `dig prepare` + `dig tokenize` with
configs/ml100k.yaml). Runs in one process (no Ray Train) so that only the objective differs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from deepinterestgr.config import load_config
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import load_catalog
from deepinterestgr.recommender.backbones.compact import CompactFormat
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import PAD
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.sequences import RaggedRows
from deepinterestgr.storage.runstore import RunStore


def sliding_samples(train: list[list[int]], fmt: CompactFormat) -> list[Example]:
    """Each target item after its preceding window; loss on the target only."""
    samples = []
    for rows in train:
        for t in range(1, len(rows)):
            prompt = fmt.prompt(rows[:t])
            samples.append(Example(prompt + fmt.vocab.encode(fmt.codes[rows[t]]).tolist(), len(prompt)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="runs/ml100k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=200, help="subsample users: sliding windows cost ~L times more")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(None, [f"storage.uri={args.run}"])
    catalog = load_catalog(RunStore(cfg))
    seqs, s = catalog.sequences, cfg.sft
    chosen = np.random.default_rng(args.seed).permutation(len(seqs.user_ids))[: args.users]
    kept = set(chosen.tolist())
    seqs.train = RaggedRows.from_lists(seqs.train[u] if u in kept else [] for u in range(len(seqs.user_ids)))
    valid = [u for u in chosen.tolist() if seqs.valid[u] >= 0 and seqs.train[u]]
    backbone = backbones.get(s.backbone)
    model, vocab, _ = backbone.build(s, catalog.trie.sizes, args.seed)
    fmt = CompactFormat(vocab, catalog.codes, s.max_items)
    prompts = [fmt.prompt(seqs.train[u]) for u in valid]
    targets = np.array([seqs.valid[u] for u in valid])
    whole = [e for rows in seqs.train for e in fmt.user_examples(rows)]
    windows = sliding_samples(seqs.train, fmt)

    out: dict = {"bench": "sft_objective", "users": len(whole), "window_samples": len(windows), "epochs": args.epochs}
    for name in ("sequence", "sliding"):
        model, vocab, _ = backbone.build(s, catalog.trie.sizes, args.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        generator = torch.Generator().manual_seed(args.seed)
        curve, spent, seen = [], 0.0, 0
        for epoch in range(args.epochs):
            model.train()
            data = whole if name == "sequence" else windows
            order = torch.randperm(len(data), generator=generator).tolist()
            began = time.perf_counter()
            for start in range(0, len(order), s.batch_size):
                batch = backbone.training_batch([data[i] for i in order[start: start + s.batch_size]], PAD)
                loss = model(**batch).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                seen += int(batch["attention_mask"].sum())
            spent += time.perf_counter() - began
            hr = ranking_metrics(target_ranks(model, prompts, targets, catalog.trie, vocab, s.beam_width), (10,))["hr@10"]
            curve.append((round(spent, 1), round(hr, 4)))
        out[name] = {"tokens_per_s": round(seen / spent), "s_per_epoch": round(spent / args.epochs, 1), "curve_s_hr10": curve}
    goal = min(max(h for _, h in out[n]["curve_s_hr10"]) for n in ("sequence", "sliding"))
    for name in ("sequence", "sliding"):
        out[name]["s_to_hr10_%.4f" % goal] = next(t for t, h in out[name]["curve_s_hr10"] if h >= goal)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
