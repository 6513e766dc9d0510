"""SFT arms x data seeds x training seeds in one process pool on one machine (one GPU, or the CPUs).

    # where the runs live: pack run folders that finished prepare + tokenize (bench/quality.py's will do)
    python bench/sft_sweep.py pack --run bench/out/office/seed0/drop --run bench/out/office/seed1/drop \
        --out sweep/office.pkl [--config FILE] [--set key=value ...]
    # anywhere with torch, transformers, numpy, pydantic and pyyaml (no Ray, no pyarrow; e.g. a lent GPU):
    python bench/sft_sweep.py run --data sweep/office.pkl [--data ...] --arm default --arm "lr2 lr=0.002" \
        [--training-seeds 1] [--procs 16] [--start-by S] [--out sweep/out]

Each job trains one arm on one packed run with one training seed (the run's seed + 0, 1, ...) through
the sft stage's own loop (`deepinterestgr/recommender/sft_loop.py`, one worker), keeps the best
validation epoch's weights as the sft stage does, and ranks the run's test users as evaluate does, so
a job with the run's own settings and training seed gives that run's GR (sft) figures. An arm is a name
followed by `sft` overrides (`key=value`, YAML values). Jobs run largest run first; with `--start-by`
no job starts after that many seconds (the machine's time is what bounds a sweep). Each job's figures
go to `<out>/jobs.jsonl` as it ends, and a rerun skips the jobs already there. Prints one JSON line:
per arm and packed run the mean and std of test HR@10 / NDCG@10 and validation NDCG@10 over the
training seeds, and the ratio of the arm's mean NDCG@10 to the first arm's on the same jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import yaml

from deepinterestgr.config import SFTConfig
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import content_rows, trainable_state
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.sft_loop import (averaged, compiled, epoch_plan, epoch_seed, optimizer_and_schedule,
                                                 train_epoch, validation_ranks, weight_average)
from deepinterestgr.tokenizer.sids import SIDTrie


def pack(config: str | None, runs: list[str], sets: list[str], out: str) -> None:
    """Write what `run` needs from each run folder (SFT examples, validation and test prompts) to one
    pickle; each run's settings come from `config`, else from the config.yaml the run saved."""
    from deepinterestgr.config import load_config
    from deepinterestgr.recommender.inputs import item_content_vectors, sft_inputs, split_rows
    from deepinterestgr.storage.runstore import RunStore

    packed = []
    for run in runs:
        saved = Path(run) / "config.yaml"
        if config is None and not saved.exists():
            raise SystemExit(f"sft_sweep: {run} has no config.yaml; name its config with --config")
        cfg = load_config(config or str(saved), [*sets, f"storage.uri={run}"])
        data = sft_inputs(cfg, RunStore(cfg))
        tests = split_rows(data.catalog, data.fmt, data.interests, "test")
        packed.append({
            # The --set's are part of the name: packs of the same runs with other settings are other runs.
            "name": " ".join([f"{cfg.name}:{Path(run).parent.name}/{Path(run).name}", *sets]), "sft": cfg.sft.model_dump(), "seed": cfg.seed,
            "sizes": list(data.catalog.trie.sizes), "items": len(data.catalog.codes), "trie": data.catalog.trie_bytes,
            "pad_id": data.fmt.pad_id, "examples": [(g, e.ids, e.loss_start, e.read_only_from) for g, e in data.grouped],
            "valid_prompts": data.valid_prompts, "valid_targets": data.valid_targets,
            "test_prompts": [r["prompt"] for r in tests], "test_targets": [r["target"] for r in tests],
            "test_histories": [r["history"] for r in tests] if cfg.evaluate.exclude_history else None,
            "test_beam_width": cfg.evaluate.beam_width,
            "content": item_content_vectors(RunStore(cfg), data.catalog.item_ids).astype(np.float32),
        })
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    temporary = f"{out}.tmp"
    with open(temporary, "wb") as handle:
        pickle.dump(packed, handle)
    os.replace(temporary, out)
    print(json.dumps({"bench": "sft_sweep", "packed": [p["name"] for p in packed], "out": out}))


def parse_arm(spec: str) -> tuple[str, dict]:
    """`"name key=value ..."` -> (name, sft overrides), checked against SFTConfig's fields."""
    name, *pairs = spec.split()
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.removeprefix("sft.")
        if not sep or key not in SFTConfig.model_fields:
            raise SystemExit(f"sft_sweep: arm {name!r}: {pair!r} is not sft_key=value (sft keys: {', '.join(SFTConfig.model_fields)})")
        if key in ("members", "distill"):
            raise SystemExit(f"sft_sweep: arm {name!r}: a job trains one model; members and their distillation are "
                             "bench/quality.py's (sft.members) and bench/distill.py's")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def train_and_test(run: dict, overrides: dict, training_seed: int, device: str) -> dict:
    """One job: the sft stage's loop on one packed run, then the test users ranked by the best validation epoch's weights."""
    cfg = SFTConfig(**{**run["sft"], **overrides})
    seed = run["seed"] + training_seed
    examples = [Example(list(ids), start, read_only) for _, ids, start, read_only in run["examples"]]
    groups = np.array([g for g, *_ in run["examples"]])
    trie = SIDTrie.from_bytes(run["trie"])
    model, vocab, _ = backbones.get(cfg.backbone).build(cfg, run["sizes"], seed, gpu=device != "cpu", items=run["items"],
                                                          item_rows=content_rows(run["content"], cfg.hidden_size) if cfg.item_token_init == "content" else None)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(epoch_plan(examples, groups, cfg, epoch_seed(seed, 0, 0))))
    model.to(device)
    average = weight_average(model, cfg)
    trained = compiled(model, cfg)
    valid_targets = np.array(run["valid_targets"])
    best, stale, best_epoch, best_state, began = -1.0, 0, -1, None, time.perf_counter()
    for epoch in range(cfg.epochs):
        stats = train_epoch(trained, optimizer, scheduler, examples, groups, cfg, vocab, run["pad_id"], epoch_seed(seed, epoch, 0),
                            average, model)
        if (epoch + 1) % cfg.eval_every and epoch != cfg.epochs - 1:
            continue
        with averaged(model, average):
            ndcg = ranking_metrics(validation_ranks(model, run["valid_prompts"], valid_targets, trie, vocab, cfg, run["pad_id"]), (10,))["ndcg@10"]
            if ndcg > best:
                best, stale, best_epoch, best_state = ndcg, 0, epoch, trainable_state(model)
            else:
                stale += 1
        if stale >= cfg.patience or math.isnan(stats.loss):
            break
    model.load_state_dict(best_state, strict=False)
    ranks = target_ranks(model, run["test_prompts"], np.array(run["test_targets"]), trie, vocab, run["test_beam_width"],
                         exclude=run["test_histories"], pad_id=run["pad_id"], item_weight=cfg.ranking_item_weight)
    test = ranking_metrics(ranks, (10,))
    return {"val_ndcg@10": best, "best_epoch": best_epoch, "hr@10": test["hr@10"], "ndcg@10": test["ndcg@10"],
            "seconds": round(time.perf_counter() - began, 1)}


_RUNS: dict[str, list[dict]] = {}


def _job(path: str, index: int, overrides: dict, training_seed: int, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    if path not in _RUNS:
        with open(path, "rb") as handle:
            _RUNS[path] = pickle.load(handle)
    return train_and_test(_RUNS[path][index], overrides, training_seed, device)


def summary(done: list[dict], arms: list[str]) -> dict:
    """Per arm and run: mean/std over training seeds; per arm the NDCG@10 ratio to the first arm on the same jobs."""
    out = {}
    for arm in arms:
        mine = [r for r in done if r["arm"] == arm]
        runs = {}
        for name in dict.fromkeys(r["run"] for r in mine):
            rows = [r for r in mine if r["run"] == name]
            runs[name] = {f"{k}_{f}": round(float(fn([r[k] for r in rows])), 4)
                          for k in ("hr@10", "ndcg@10", "val_ndcg@10") for f, fn in (("mean", np.mean), ("std", np.std))}
            runs[name]["jobs"] = len(rows)
        keys = {(r["run"], r["training_seed"]) for r in mine}
        first = [r for r in done if r["arm"] == arms[0] and (r["run"], r["training_seed"]) in keys]
        ours = [r for r in mine if (r["run"], r["training_seed"]) in {(f["run"], f["training_seed"]) for f in first}]
        ratio = float(np.mean([r["ndcg@10"] for r in ours]) / np.mean([r["ndcg@10"] for r in first])) if first else None
        out[arm] = {"runs": runs, "ndcg@10_vs_first_arm": round(ratio, 4) if ratio else None}
    return out


def run_sweep(data: list[str], arms: list[tuple[str, dict]], training_seeds: int, procs: int, out: Path,
              start_by: float | None) -> dict:
    """Every (arm, packed run, training seed) job not yet in `<out>/jobs.jsonl`, `procs` at a time."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = 1 if device == "cuda" else max(1, (os.cpu_count() or 1) // procs)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "jobs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    finished = {(r["arm"], r["run"], r["training_seed"]) for r in done}
    jobs = []
    for path in data:
        with open(path, "rb") as handle:
            runs = pickle.load(handle)
        for index, run in enumerate(runs):
            for name, overrides in arms:
                for training_seed in range(training_seeds):
                    if (name, run["name"], training_seed) not in finished:
                        jobs.append((len(run["examples"]), path, index, run["name"], name, overrides, training_seed))
    jobs.sort(key=lambda job: -job[0])
    began, skipped = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn")) as pool:
        pending = {}
        for _, path, index, run_name, name, overrides, training_seed in jobs:
            while len(pending) >= procs:
                ended, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ended:
                    done.append(_record(log, pending.pop(future), future.result()))
            if start_by is not None and time.perf_counter() - began > start_by:
                skipped += 1
                continue
            future = pool.submit(_job, path, index, overrides, training_seed, device, threads)
            pending[future] = {"arm": name, "run": run_name, "training_seed": training_seed}
        for future in pending:
            done.append(_record(log, pending[future], future.result()))
    return {"bench": "sft_sweep", "device": device, "jobs_run": len(jobs) - skipped, "jobs_not_started": skipped,
            "seconds": round(time.perf_counter() - began, 1), "arms": summary(done, [name for name, _ in arms]),
            "overrides": dict(arms)}


def _record(log: Path, job: dict, result: dict) -> dict:
    row = {**job, **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}
    with open(log, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="run folders -> one pickle of SFT inputs")
    packing.add_argument("--config", help="the runs' config (default: each run's own config.yaml)")
    packing.add_argument("--run", action="append", required=True, help="a run folder with prepare and tokenize committed")
    packing.add_argument("--set", action="append", default=[])
    packing.add_argument("--out", required=True)
    sweep = commands.add_parser("run", help="arms x packed runs x training seeds")
    sweep.add_argument("--data", action="append", required=True, help="a pickle written by `pack`")
    sweep.add_argument("--arm", action="append", default=[], help='"NAME key=value ..." (sft keys; default: one arm, the runs as packed)')
    sweep.add_argument("--training-seeds", type=int, default=1)
    sweep.add_argument("--procs", type=int, default=2)
    sweep.add_argument("--start-by", type=float, help="start no job after this many seconds")
    sweep.add_argument("--out", default="bench/out/sft_sweep")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.config, args.run, args.set, args.out)
        return 0
    arms = [parse_arm(spec) for spec in (args.arm or ["default"])]
    if len({name for name, _ in arms}) != len(arms):
        raise SystemExit("sft_sweep: arm names must differ")
    print(json.dumps(run_sweep(args.data, arms, args.training_seeds, args.procs, Path(args.out), args.start_by)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
