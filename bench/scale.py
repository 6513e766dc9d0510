"""How the SID trie and the constrained beam search scale with the catalog: one JSON line per size.

    python bench/scale.py [--items 10000 100000 1000000] [--users 64] [--beam 20]

For each catalog size N (random 3-level SIDs over codebooks of 256 plus a disambiguation level, as
tokenize makes them): trie build seconds, trie bytes per item (sparse CSR arrays) against the dense
per-level tables the trie used to hold, beam search users/s for `--users` users with a compact decoder
of random weights (speed does not depend on training), and the process's peak RSS. After the last size,
one more line with each time's growth exponent between the last two sizes (log t2/t1 / log N2/N1).
Not covered yet (issue #18): prepare, tokenize and one SFT epoch at these sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import numpy as np
import torch

from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.model import BOS, CompactModelConfig, compact_model
from deepinterestgr.tokenizer.sids import SIDTrie, add_extra_level

LEVELS = [256, 256, 256]


def catalog(n: int, rng: np.random.Generator) -> np.ndarray:
    """n unique SIDs: 3 random levels, colliding items numbered on a 4th level."""
    return add_extra_level(rng.integers(0, 256, size=(n, 3)))


def dense_bytes(trie: SIDTrie) -> int:
    """What the former dense tables (nodes x codebook int64 per level) would hold for the same SIDs."""
    return sum(trie.node_count(level) * size * 8 for level, size in enumerate(trie.sizes))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int, users: int, beam: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    codes = catalog(n, rng)
    sizes = LEVELS + [int(codes[:, 3].max()) + 1]
    start = time.perf_counter()
    trie = SIDTrie.build(codes, sizes)
    build_s = time.perf_counter() - start
    model, vocab = compact_model(sizes, CompactModelConfig(), seed=seed)
    prompts = [[BOS] + vocab.encode(codes[rng.choice(n, 10)]).reshape(-1).tolist() for _ in range(users)]
    beam_search(model, prompts[:2], trie, vocab, beam, 10)  # warm-up: the trie's arrays reach the device
    start = time.perf_counter()
    result = beam_search(model, prompts, trie, vocab, beam, 10)
    search_s = time.perf_counter() - start
    assert (result.items >= 0).all()
    return {"bench": "scale", "items": n, "trie_build_s": round(build_s, 3), "trie_bytes_per_item": round(trie.nbytes() / n, 1),
            "dense_trie_bytes_per_item": round(dense_bytes(trie) / n, 1), "beam_users_per_s": round(users / search_s, 1),
            "beam_s": round(search_s, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = []
    for n in args.items:
        lines.append(measure(n, args.users, args.beam, args.seed))
        print(json.dumps(lines[-1]), flush=True)
    if len(lines) >= 2:
        a, b = lines[-2], lines[-1]
        growth = math.log(b["items"] / a["items"])
        print(json.dumps({"bench": "scale_growth", "from": a["items"], "to": b["items"],
                          "trie_build_exponent": round(math.log(b["trie_build_s"] / a["trie_build_s"]) / growth, 2),
                          "beam_time_exponent": round(math.log(b["beam_s"] / a["beam_s"]) / growth, 2)}))


if __name__ == "__main__":
    main()
