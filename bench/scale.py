"""How each step scales with the catalog: one JSON line per catalog size, then the growth exponents.

    python bench/scale.py [--items 10000 100000 1000000] [--per-item 10] [--users 64] [--beam 20]
                          [--sft-users 2000] [--block-users 25000] [--out /tmp/scale]

For each catalog size N, the synthetic generator's catalog of N items and N x `--per-item` / 10 users
of 5 to 15 items (no images), then each step runs on it and reports its seconds and how far the RSS of
this process rose above its level at the step's start (sampled every 50 ms; Ray workers are not counted):
- prepare: the real `prepare` stage with `data.loader: synthetic`: the catalog drawn in the driver,
  the users in Ray tasks of `--block-users` users each (one block: in the driver), the 5-core and
  the leave-last-out split on Ray Data blocks (the parquet loader's path), Parquet commit;
- sequences: the users' SID sequences as sft, grpo and evaluate build them from the split;
- tokenize: residual k-means (faiss k-means fits each level on a sample of 256 points per centroid,
  then every item is assigned) on random 64-dimensional item vectors, and the disambiguation level;
  the text encoder is left out (its cost is one forward pass per item, on the cluster's GPUs);
- trie: building the sparse SID trie; its bytes per item against the dense per-level tables the trie
  used to hold;
- sft_epoch: one SFT epoch of the compact decoder on a fixed sample of `--sft-users` users;
- beam: constrained beam search for `--users` users (the model's weights are random: speed does not
  depend on training).
After the last size, one line with each time's growth exponent between the last two sizes
(log t2/t1 / log N2/N1; 1 = linear).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import ray
import torch

from deepinterestgr.config import load_config
from deepinterestgr.recommender.backbones.compact import COMPACT, CompactModelConfig, compact_model
from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.formats import CompactFormat
from deepinterestgr.recommender.model import PAD
from deepinterestgr.recommender.sequences import build_sequences
from deepinterestgr.recommender.sft_loop import sft_loss
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.tokenizer.rkmeans import residual_kmeans
from deepinterestgr.tokenizer.sids import SIDTrie, add_extra_level
from ray_jobs import prepare

LEVELS = [256, 256, 256]
STEPS = ("prepare", "sequences", "tokenize", "trie", "sft_epoch", "beam")


@contextmanager
def measured(out: dict, step: str):
    """Seconds, and the peak RSS of this process above its RSS at the start (MB), into out[step + "_s"/"_rss_extra_mb"]."""
    process, done = psutil.Process(), threading.Event()
    base = process.memory_info().rss
    peak = [base]

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    yield
    out[f"{step}_s"] = round(time.perf_counter() - start, 3)
    done.set()
    sampler.join()
    out[f"{step}_rss_extra_mb"] = round((max(peak[0], process.memory_info().rss) - base) / 2**20, 1)


def dense_bytes(trie: SIDTrie) -> int:
    """What the former dense tables (nodes x codebook int64 per level) would hold for the same SIDs."""
    return sum(trie.node_count(level) * size * 8 for level, size in enumerate(trie.sizes))


def measure(n: int, args, root: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    out: dict = {"bench": "scale", "items": n}
    cfg = load_config(None, ["data.loader=synthetic", f"data.synthetic.num_items={n}", "data.synthetic.num_categories=8",
                             "data.synthetic.interests_per_category=6", f"data.synthetic.num_users={n * args.per_item // 10}",
                             "data.synthetic.min_sequence=5", "data.synthetic.max_sequence=15", "data.synthetic.images=false",
                             f"data.synthetic.block_users={args.block_users}",
                             "data.kcore=5", f"storage.uri={root / f'run{n}'}", f"seed={args.seed}"])
    with measured(out, "prepare"):
        prepared = prepare.run(cfg, RunStore(cfg))
    out["interactions"] = prepared.entry.report["before_filter"]["interactions"]
    store = RunStore(cfg)
    items = store.read_table("prepare", "items").column("item_id").to_pylist()
    with measured(out, "sequences"):
        sequences = build_sequences(store.read_table("prepare", "interactions"), items)
    out["items_after_kcore"] = len(items)

    vectors = rng.standard_normal((len(items), 64), dtype=np.float32)
    with measured(out, "tokenize"):
        codes = add_extra_level(residual_kmeans(vectors, len(LEVELS), LEVELS[0], 10, args.seed)[0])
    del vectors
    sizes = LEVELS + [int(codes[:, 3].max()) + 1]
    with measured(out, "trie"):
        trie = SIDTrie.build(codes, sizes)
    out["trie_bytes_per_item"] = round(trie.nbytes() / len(items), 1)
    out["dense_trie_bytes_per_item"] = round(dense_bytes(trie) / len(items), 1)

    model, vocab = compact_model(sizes, CompactModelConfig(max_items=21), seed=args.seed)
    fmt = CompactFormat(vocab, codes, max_items=20)
    users = np.random.default_rng(args.seed).choice(len(sequences.train), size=min(args.sft_users, len(sequences.train)), replace=False)
    examples = [e for u in users.tolist() for e in fmt.user_examples(sequences.train[u])]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    with measured(out, "sft_epoch"):
        for start in range(0, len(examples), 64):
            loss = sft_loss(model, COMPACT.training_batch(examples[start: start + 64], PAD))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()

    prompts = [fmt.prompt(sequences.train[u]) for u in users[: args.users].tolist()]
    beam_search(model, prompts[:2], trie, vocab, args.beam, 10)  # warm-up: the trie's arrays reach the device
    with measured(out, "beam"):
        result = beam_search(model, prompts, trie, vocab, args.beam, 10)
    assert (result.items >= 0).all()
    out["beam_users_per_s"] = round(len(prompts) / out["beam_s"], 1)
    out["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--per-item", type=int, default=10, help="interactions per item")
    parser.add_argument("--users", type=int, default=64, help="users in the beam search")
    parser.add_argument("--sft-users", type=int, default=2000, help="users in the SFT epoch (fixed, whatever N)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--block-users", type=int, default=25_000, help="users per generator block (Ray task)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the generated data and runs (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        lines = []
        for n in args.items:
            lines.append(measure(n, args, root))
            print(json.dumps(lines[-1]), flush=True)
    if len(lines) >= 2:
        a, b = lines[-2], lines[-1]
        growth = math.log(b["items"] / a["items"])
        print(json.dumps({"bench": "scale_growth", "from": a["items"], "to": b["items"],
                          **{f"{step}_exponent": round(math.log(b[f"{step}_s"] / a[f"{step}_s"]) / growth, 2) for step in STEPS}}))


if __name__ == "__main__":
    main()
