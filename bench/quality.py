"""The quality benchmark: arms (backbone, SID source, training options) x seeds against SASRec and most-popular.

    python bench/quality.py --config configs/amazon_office.yaml --seeds 3 \
        --arm "compact" --arm "encdec sft.backbone=encoder_decoder sft.item_head=0" [--set sft.epochs=20 ...] [--out bench/out/office]

An arm is a name followed by config overrides (`key=value`, space separated); `--set` applies to
every arm. For each seed, each arm runs prepare -> tokenize -> sft [-> grpo] -> evaluate in its own
run folder under `--out`; an arm whose prepare/tokenize settings equal an earlier arm's of the same
seed starts from a copy of those stages instead of recomputing them. SASRec and most-popular depend
on the split only, so they are trained and scored once per seed (in the first arm's evaluate) on the
same split as every arm. A rerun with the same `--out` skips what is already committed there.
Prints one JSON line (per arm: mean and std of HR@5/10 and NDCG@5/10 over the seeds, and the mean
seconds this invocation spent on it, near 0 for reused stages) and writes `quality.md` (the table)
and `quality_val.png` (validation NDCG@10 per SFT epoch per arm) into `--out`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import ray

from deepinterestgr.config import load_config
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import pipeline
from ray_jobs.common import start_ray

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
BASELINES = ("SASRec", "most-popular")


def parse_arm(spec: str) -> tuple[str, list[str]]:
    name, *overrides = spec.split()
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SystemExit(f"quality: arm {name!r}: overrides must look like key=value, got {bad}")
    return name, overrides


def reuse_upstream(store: RunStore, source: RunStore | None, first: Path | None) -> None:
    """Start a new run from an earlier one: its prepare and tokenize stages when their settings are the
    same (`source`), else at least the text-embedding cache of the first run (the texts do not depend on the seed)."""
    if source is not None:
        store.adopt(source, ("prepare", "tokenize"))
    elif first is not None and (first / "cache" / "tokenize").exists():
        shutil.copytree(first / "cache" / "tokenize", Path(store.root) / "cache" / "tokenize")


def summarise(values: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for metric in METRICS:
        column = [v[metric] for v in values]
        out[f"{metric}_mean"], out[f"{metric}_std"] = round(float(np.mean(column)), 4), round(float(np.std(column)), 4)
    return out


def markdown(config: str, seeds: list[int], rows: dict[str, dict]) -> str:
    sasrec = rows.get("SASRec", {}).get("ndcg@10_mean")
    lines = [f"Quality benchmark: `{config}`, seeds {seeds}, test split, full ranking (mean ± std over seeds).", "",
             "| arm | HR@5 | HR@10 | NDCG@5 | NDCG@10 | NDCG@10 / SASRec | seconds |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        cells = [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" for m in METRICS]
        ratio = f"{row['ndcg@10_mean'] / sasrec:.2f}" if sasrec else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {row.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        for i, curve in enumerate(runs):
            ax.plot(*zip(*curve), color=f"C{list(curves).index(name)}", alpha=0.8,
                    label=name if i == 0 else None)
    ax.set_xlabel("SFT epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the dataset's run config")
    parser.add_argument("--arm", action="append", default=[], help='"NAME key=value ..." (repeatable; default: one arm, the config as is)')
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--set", action="append", default=[], help="override for every arm")
    parser.add_argument("--grpo", action="store_true", help="run GRPO after SFT in every arm")
    parser.add_argument("--out", help="folder for the runs and the table (default bench/out/<config name>)")
    args = parser.parse_args()
    arms = [parse_arm(spec) for spec in (args.arm or ["default"])]
    if len({name for name, _ in arms}) != len(arms):
        raise SystemExit("quality: arm names must differ")
    out = Path(args.out or f"bench/out/{Path(args.config).stem}").resolve()
    stages = ["prepare", "tokenize", "sft", *(["grpo"] if args.grpo else []), "evaluate"]
    seeds = list(range(args.seeds))
    results: dict[str, list[dict]] = {name: [] for name, _ in arms}
    results.update({name: [] for name in BASELINES})
    seconds: dict[str, list[float]] = {name: [] for name, _ in arms}
    curves: dict[str, list[list[tuple[int, float]]]] = {name: [] for name, _ in arms}
    started_ray, first_run = False, None
    for seed in seeds:
        upstream: dict[str, RunStore] = {}
        for index, (name, overrides) in enumerate(arms):
            run_dir = out / f"seed{seed}" / name
            cfg = load_config(args.config, [*args.set, *overrides, f"seed={seed}", f"storage.uri={run_dir}",
                                            f"pipeline.stages=[{','.join(stages)}]",
                                            f"evaluate.sasrec.enabled={'true' if index == 0 else 'false'}"])
            if not started_ray:
                start_ray(cfg)
                ray.data.DataContext.get_current().enable_progress_bars = False
                started_ray = True
            key = cfg.section_hash("data", "tokenize")
            new = not run_dir.exists()
            store = RunStore(cfg)
            if new:
                reuse_upstream(store, upstream.get(key), first_run)
            first_run = first_run or run_dir
            store.save_config(cfg)
            began = time.perf_counter()
            pipeline.run(cfg, store)
            seconds[name].append(time.perf_counter() - began)
            upstream.setdefault(key, store)
            report = store.require("evaluate").report
            for model, metrics in report["results"].items():
                target = name if model.startswith("GR") else model
                results[target].append({m: metrics[m] for m in METRICS})
            curves[name].append([(h["epoch"] + 1, h["val_ndcg@10"]) for h in store.require("sft").report["history"]])
            print(f"quality: seed {seed} arm {name}: " + json.dumps(report["results"]), file=sys.stderr, flush=True)
    rows = {name: {**summarise(values), **({"seconds": round(float(np.mean(seconds[name])), 1)} if name in seconds else {})}
            for name, values in results.items() if values}
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(markdown(args.config, seeds, rows))
    plot(curves, out / "quality_val.png")
    print(json.dumps({"bench": "quality", "config": args.config, "seeds": seeds, "grpo": args.grpo,
                      "arms": {name: overrides for name, overrides in arms}, "results": rows, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
