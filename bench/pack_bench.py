"""SFT with packed rows (`sft.pack_tokens`), with length-bucketed batches (`sft.length_buckets`), with batches cut
by a token budget (`sft.batch_tokens`) and with a compiled forward pass (`sft.compile`) against one padded row per
example, on a run's own examples, in one run.

    python bench/pack_bench.py --run runs/default --config configs/default.yaml --set sft.backbone=llm ... \
        [--arms labelled,packed,bucketed,budget,compiled] [--pack-tokens 512] [--buckets 50] [--batch-tokens N] \
        [--compile default] [--steps 30] [--warmup 2] [--threads 2] [--device cuda]

Every arm starts from the same weights. The padded and packed arms see the same batches (`sft.batch_size`
examples per step, the stage's example order); only the layout differs. The bucketed arm sees batches of the
same size drawn from the same order, sorted by length in runs of `--buckets` batches (so other batches: its
loss differs by sampling, not by computation). The compiled arm is the padded one through `torch.compile`
(its dropout draws differ), compiled_bucketed the bucketed one through it (not run by default). The budget arm
is the bucketed one cut by `--batch-tokens` instead of `sft.batch_size` (short examples in larger batches: its steps
read more examples; with `--examples N` every arm reads the same N examples, so validation compares), compiled_budget
the same through `torch.compile`. The padded arm computes the llm backbone's logits at every position, as training did
before `sft.llm.labelled_logits`; every other arm as the config says (default: only where a label follows), and the
labelled arm is the padded one with that alone. Prints one JSON line: per arm tokens/s (real tokens, padding excluded) over the
steps after the first `--warmup` (where compilation happens), the seconds of those first steps and of all, the
padding share of the positions computed, the steps and examples read, the mean loss of the steps, and validation
HR@10 / NDCG@10 of the run's validation users after the steps (`sft.valid_users`; the same across arms up to float noise and dropout draws, since they change
the layout or the kernels, not the computation); then each arm's tokens/s over the padded arm's. Needs a run
with committed prepare and tokenize stages (and mine for the llm backbone's interest prompts, when it ran). One process, no Ray Train.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import get_args

import numpy as np
import torch

from deepinterestgr.config import SFTConfig, load_config
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.inputs import sft_inputs
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.sft_loop import compiled, epoch_plan, epoch_seed, optimizer_and_schedule, sft_loss
from deepinterestgr.storage.runstore import RunStore


def arm(model, cfg, data, steps: int, seed: int, warmup: int = 2, examples_cap: int = 0) -> dict:
    """`steps` steps of the sft loop's batches under `cfg.sft`'s layout (pack_tokens, length_buckets, batch_tokens,
    compile), or with `examples_cap` the steps that read that many examples, then validation."""
    s = cfg.sft
    trained = compiled(model, s)
    device = next(model.parameters()).device
    backbone = backbones.get(s.backbone)
    autocast = backbone.autocast(s)
    examples = [e for _, e in data.grouped]
    groups = np.array([g for g, _ in data.grouped])
    batches = epoch_plan(examples, groups, s, epoch_seed(seed, 0, 0))
    optimizer, scheduler = optimizer_and_schedule(model, s, len(batches))
    torch.manual_seed(epoch_seed(seed, 0, 0))
    model.train()
    real = computed = 0
    losses, began, steady = [], time.perf_counter(), None
    read = 0
    for step, indices in enumerate(batches if examples_cap else batches[:steps]):
        if examples_cap and read >= examples_cap:
            break
        read += len(indices)
        if step == warmup:
            steady, real_before = time.perf_counter(), real
        chunk = [examples[i] for i in indices.tolist()]
        batch = {k: v.to(device) for k, v in backbone.training_batch(chunk, data.fmt.pad_id, s.pack_tokens).items()}
        with autocast():
            loss = sft_loss(trained, batch, s.label_smoothing, s.item_head, data.fmt.vocab, labelled_logits=backbone.labelled_logits(s))
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        real += sum(len(e.ids) for e in chunk)
        computed += batch["input_ids"].numel()
    ended = time.perf_counter()
    if steady is None:
        raise SystemExit(f"pack_bench: --steps {steps} leaves no step after --warmup {warmup}")
    model.eval()
    with autocast():
        ranks = target_ranks(model, data.valid_prompts, np.array(data.valid_targets), data.catalog.trie, data.fmt.vocab, s.beam_width,
                             pad_id=data.fmt.pad_id, item_weight=s.ranking_item_weight)
    return {"tokens_per_s": round((real - real_before) / (ended - steady), 1), "padding_share": round(1 - real / computed, 3),
            "warmup_s": round(steady - began, 1), "seconds": round(ended - began, 1),
            "steps": len(losses), "examples": read, "mean_loss": round(float(np.mean(losses)), 5), **ranking_metrics(ranks, (10,))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--pack-tokens", type=int, default=512)
    parser.add_argument("--buckets", type=int, default=50, help="batches per length-sorted run in the bucketed and budget arms")
    parser.add_argument("--batch-tokens", type=int, default=0,
                        help="sft.batch_tokens of the budget arms (default: sft.batch_size x the examples' mean length x 1.5)")
    modes = [m for m in get_args(SFTConfig.model_fields["compile"].annotation) if m != "off"]
    parser.add_argument("--compile", default="default", choices=modes,
                        help="sft.compile of the compiled arms")
    parser.add_argument("--arms", type=lambda text: text.split(","), default=["packed", "bucketed", "compiled"],
                        help="comma-separated arms beside padded (the baseline, always run): labelled, packed, bucketed, "
                             "budget, compiled, compiled_bucketed, compiled_budget")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--examples", type=int, default=0,
                        help="run each arm until it has read this many examples instead of --steps (arms whose batches "
                             "differ in size then train on the same amount of data)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s (compilation)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (sft.use_gpu: bf16 for the llm backbone with sft.llm.bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.set, f"storage.uri={args.run}", f"sft.use_gpu={str(args.device != 'cpu').lower()}"])
    backbone = backbones.get(cfg.sft.backbone)
    if not backbone.packs:
        raise SystemExit(f"pack_bench: the {backbone.name} backbone does not pack examples (sft.pack_tokens)")
    data = sft_inputs(cfg, RunStore(cfg))
    model, _, _ = backbone.build(cfg.sft, data.catalog.trie.sizes, cfg.seed, gpu=cfg.sft.use_gpu, items=len(data.catalog.codes),
                                 item_rows=data.item_rows)
    model.to(args.device)
    start = copy.deepcopy(model.state_dict())
    batch_tokens = args.batch_tokens or round(cfg.sft.batch_size * np.mean([len(e.ids) for _, e in data.grouped]) * 1.5)

    def layout(compile_mode: str, pack_tokens: int = 0, buckets: int = 0, tokens: int = 0, labelled: bool = cfg.sft.llm.labelled_logits):
        update = {"compile": compile_mode, "pack_tokens": pack_tokens, "length_buckets": buckets, "batch_tokens": tokens,
                  "llm": cfg.sft.llm.model_copy(update={"labelled_logits": labelled})}
        return cfg.model_copy(update={"sft": cfg.sft.model_copy(update=update)})

    arms = {"padded": layout("off", labelled=False), "labelled": layout("off"), "packed": layout("off", pack_tokens=args.pack_tokens),
            "bucketed": layout("off", buckets=args.buckets), "budget": layout("off", buckets=args.buckets, tokens=batch_tokens),
            "compiled": layout(args.compile), "compiled_bucketed": layout(args.compile, buckets=args.buckets),
            "compiled_budget": layout(args.compile, buckets=args.buckets, tokens=batch_tokens)}
    unknown = set(args.arms) - set(arms)
    if unknown:
        raise SystemExit(f"pack_bench: --arms takes any of {', '.join(arms)}; not {', '.join(sorted(unknown))}")
    results = {}
    for name in [a for a in arms if a == "padded" or a in args.arms]:
        model.load_state_dict(start)
        results[name] = arm(model, arms[name], data, args.steps, cfg.seed, args.warmup, args.examples)
    speedups = {f"{name}_speedup": round(r["tokens_per_s"] / results["padded"]["tokens_per_s"], 2)
                for name, r in results.items() if name != "padded"}
    print(json.dumps({"bench": "pack", "run": args.run, "device": args.device, "backbone": cfg.sft.backbone, "batch_size": cfg.sft.batch_size,
                      "pack_tokens": args.pack_tokens, "buckets": args.buckets, "batch_tokens": batch_tokens, "compile": args.compile,
                      "examples": len(data.grouped), "valid_users": len(data.valid_users), **results, **speedups}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
