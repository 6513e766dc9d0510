"""Constrained beam search: ours (sparse trie expanded to masks for all beams at once, batched, each
prompt's KV cache shared by its beams) against Hugging Face `generate(num_beams=...,
prefix_allowed_tokens_fn=trie walk)` on the same model, catalog, users and beam width, in one run.
Prints one JSON line (users/s, latency per user, top-K agreement, KV cache bytes and peak memory).

    python bench/beam_search_bench.py [--items 3459] [--users 64] [--beam 20] [--k 10] [--history 10] [--device cuda]
                                      [--backbone compact|encoder_decoder]

Memory: `prompt_cache_mb` is the prefill's KV cache (every prompt once), `per_beam_copy_mb` what a
cache copied to every beam holds (prompt cache x beam width: what `reorder_cache` made before the
cache was shared), `held_cache_mb` what our search holds at its last step; `*_peak_rss_extra_mb` is
the process's peak RSS during each search above its RSS before it (ours first, then HF's).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from deepinterestgr.config import SFTConfig
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.decoding import left_pad, prefill, step
from deepinterestgr.recommender.model import BOS, PAD, SEP
from deepinterestgr.tokenizer.sids import SIDTrie


def hf_generate(model, prompts, trie, vocab, beam, k):
    """The public implementations' way: generate() with a Python trie walk per beam per step."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, PAD))
    # generate() returns the prompt and the SID (decoder-only), or the decoder start token and the SID.
    width = 1 if model.config.is_encoder_decoder else ids.shape[1]
    starts = vocab.starts

    def allowed(_batch_id: int, sequence: torch.Tensor) -> list[int]:
        node = 0
        generated = sequence[width:].tolist()  # one device-to-host copy per beam per step, as generate() does
        for level, token in enumerate(generated):
            codes, targets = trie.edges(level, node)
            node = int(targets[np.searchsorted(codes, token - starts[level])])
        level = len(generated)
        if level >= vocab.levels:
            return [SEP]
        return (trie.edges(level, node)[0].astype(np.int64) + starts[level]).tolist()

    out = model.generate(
        input_ids=ids, attention_mask=mask, num_beams=beam, num_return_sequences=k, max_new_tokens=vocab.levels,
        min_new_tokens=vocab.levels, prefix_allowed_tokens_fn=allowed, length_penalty=0.0, do_sample=False,
        early_stopping=True, pad_token_id=PAD, eos_token_id=None, output_scores=False,
    )
    codes = (out[:, width:].cpu() - torch.from_numpy(starts)).view(len(prompts), k, vocab.levels).numpy()
    return np.array([[trie.lookup(c.tolist()) for c in user] for user in codes])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=3459)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--history", type=int, default=10, help="items per prompt (3 tokens each)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the device)")
    parser.add_argument("--backbone", default="compact", choices=["compact", "encoder_decoder"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    sizes = [256, 256, 256]
    codes = np.unique(rng.integers(0, 256, size=(args.items * 2, 3)), axis=0)
    codes = codes[rng.permutation(len(codes))[: args.items]]
    trie = SIDTrie.build(codes, sizes)
    model, vocab, _ = backbones.get(args.backbone).build(SFTConfig(backbone=args.backbone, max_items=49), sizes, args.seed)
    model.to(device)
    prompts = [[BOS] + vocab.encode(codes[rng.choice(len(codes), args.history)]).reshape(-1).tolist() for _ in range(args.users)]

    beam_search(model, prompts[:2], trie, vocab, args.beam, args.k)  # warm-up
    cache = cache_sizes(model, prompts, vocab, args.beam)
    before = rss_mb()
    reset_gpu_peak(device)
    start = time.perf_counter()
    ours = beam_search(model, prompts, trie, vocab, args.beam, args.k)
    ours_s = elapsed(start, device)
    ours_peak, ours_gpu = peak_rss_mb() - before, gpu_peak_mb(device)
    before = rss_mb()
    reset_gpu_peak(device)
    start = time.perf_counter()
    theirs = hf_generate(model, prompts, trie, vocab, args.beam, args.k)
    hf_s = elapsed(start, device)
    hf_peak, hf_gpu = peak_rss_mb() - before, gpu_peak_mb(device)
    print(json.dumps({
        "bench": "beam_search", "device": args.device, "backbone": args.backbone, "items": args.items, "users": args.users, "beam": args.beam, "k": args.k,
        "ours_users_per_s": round(args.users / ours_s, 1), "hf_generate_users_per_s": round(args.users / hf_s, 1),
        "ours_ms_per_user": round(1000 * ours_s / args.users, 2), "hf_ms_per_user": round(1000 * hf_s / args.users, 2),
        "speedup": round(hf_s / ours_s, 2),
        "identical_top_k_sets": float(np.mean([set(a) == set(b) for a, b in zip(ours.items, theirs)])),
        "identical_top_k_order": float(np.mean([list(a) == list(b) for a, b in zip(ours.items, theirs)])),
        "prompt_tokens": len(prompts[0]), **cache,
        "ours_peak_rss_extra_mb": round(ours_peak, 1), "hf_peak_rss_extra_mb": round(hf_peak, 1),
        "ours_peak_gpu_mb": ours_gpu, "hf_peak_gpu_mb": hf_gpu,
    }))


def elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mb(device: torch.device) -> float | None:
    """Peak memory the search allocated on the GPU (None on CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_sizes(model, prompts, vocab, beam) -> dict:
    """KV cache bytes: the prompts' (once), a copy per beam, and what the shared search holds at its last step."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, PAD))
    state, _ = prefill(model, ids, mask)
    prompt = state.cache.nbytes()
    beams = 1
    for level, size in enumerate(vocab.sizes[:-1]):
        # the shapes of a full beam, not its scores, are measured here: every beam takes parent 0
        width = min(beam, beams * size)
        beam_index = (torch.arange(len(prompts))[:, None] * beams + torch.zeros((1, width), dtype=torch.long)).view(-1).to(device)
        tokens = torch.full((len(beam_index), 1), int(vocab.starts[level]), dtype=torch.long, device=device)
        state, _ = step(model, state, beam_index, tokens)
        beams = width
    return {"prompt_cache_mb": round(prompt / 2**20, 2), "per_beam_copy_mb": round(prompt * beam / 2**20, 2),
            "held_cache_mb": round(state.cache.nbytes() / 2**20, 2),
            "cache_reduction": round(prompt * beam / state.cache.nbytes(), 1)}


if __name__ == "__main__":
    main()
