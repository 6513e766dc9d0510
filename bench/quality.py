"""The quality benchmark: arms (backbone, SID source, training options) x seeds against SASRec and most-popular.

    python bench/quality.py --config configs/amazon_office.yaml --seeds 3 \
        --arm "compact" --arm "encdec sft.backbone=encoder_decoder sft.item_head=0" [--set sft.epochs=20 ...] [--out bench/out/office]
    python bench/quality.py --config configs/amazon_office.yaml --mined runs/office_mined \
        --arm "plain" --arm "interests pipeline.stages=[prepare,mine,label,tokenize,sft,evaluate]"

An arm is a name followed by config overrides (`key=value`, space separated); `--set` applies to
every arm. For each seed, each arm runs prepare -> tokenize -> sft [-> grpo] -> evaluate in its own
run folder under `--out`; an arm whose prepare/tokenize settings equal an earlier arm's of the same
seed starts from a copy of those stages instead of recomputing them. SASRec and most-popular depend
on the split only, so they are trained and scored once per seed (in the first arm's evaluate) on the
same split as every arm: SASRec's grid is searched on validation users, and as many SASRec seeds are
trained as the arm with the most members has, so each arm meets SASRec with its own member count
(equal cost; an arm with `sft.distill` ranks with one model, so it meets SASRec x1) and SASRec x1 is shown for reference. A rerun with the same `--out` skips what is
already committed there.

Every figure is given on the validation users (where arms are compared: the winner is the arm with the
best mean validation NDCG@10) and on the test users (reported, never used to choose). Prints one
JSON line (per arm and baseline: mean and std of HR@5/10 and NDCG@5/10 over the seeds on both splits,
the mean seconds this invocation spent on it, near 0 for reused stages; per arm `vs_sasrec`, its NDCG@10 over
SASRec's at its cost with a 95% paired bootstrap interval over the users, pooled over the seeds; the arm
validation chose) and
writes `quality.md` (the table) and `quality_val.png` (validation NDCG@10 per SFT epoch per arm) into `--out`.
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
from deepinterestgr.metrics import ndcg_gains, ratio_interval
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import pipeline
from ray_jobs.common import start_ray

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")


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


def summarise(values: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Mean and std over seeds of each metric on each split (`val_` and plain test keys)."""
    out = {}
    for split, prefix in (("validation", "val_"), ("test", "")):
        for metric in METRICS:
            column = [v[split][metric] for v in values if split in v]
            if column:
                out[f"{prefix}{metric}_mean"] = round(float(np.mean(column)), 4)
                out[f"{prefix}{metric}_std"] = round(float(np.std(column)), 4)
    return out


def split_gains(store: RunStore, model: str, k: int = 10) -> dict[str, np.ndarray] | None:
    """Each split's per-user NDCG@k of one model, from a run's evaluate `ranks` table (None for a run
    evaluated before evaluate kept the table, or without that model)."""
    try:
        table = store.read_table("evaluate", "ranks").to_pandas()
    except (FileNotFoundError, OSError):
        return None
    if model not in table:
        return None
    return {split: ndcg_gains(rows[model].to_numpy(), k) for split, rows in table.groupby("split")}


def pooled_intervals(arm: list[dict | None], sasrec: list[dict | None], samples: int) -> dict[str, dict[str, float]]:
    """An arm's NDCG@10 over SASRec's at its cost, over every seed, with a paired bootstrap interval over
    the users (`ratio_interval`); {} when a run lacks its ranks table."""
    if not samples or any(g is None for g in (*arm, *sasrec)):
        return {}
    return {"validation" if split == "valid" else split: ratio_interval([g[split] for g in arm], [g[split] for g in sasrec], samples, seed=0)
            for split in arm[0] if all(split in g for g in (*arm, *sasrec))}


def chosen_arm(rows: dict[str, dict], arms: list[str]) -> str | None:
    """The arm with the best mean validation NDCG@10 (None without validation figures)."""
    scored = [a for a in arms if "val_ndcg@10_mean" in rows.get(a, {})]
    return max(scored, key=lambda a: rows[a]["val_ndcg@10_mean"]) if scored else None


def markdown(config: str, seeds: list[int], rows: dict[str, dict], members: dict[str, int], winner: str | None) -> str:
    lines = [f"Quality benchmark: `{config}`, seeds {seeds}, full ranking (mean ± std over seeds). Arms are compared on "
             "validation NDCG@10; test figures are reported. Ratios are to SASRec with as many models as the arm has, "
             "with a 95% paired bootstrap interval over the users in brackets (runs that kept their ranks).", "",
             "| arm | models | val NDCG@10 | val / SASRec | HR@5 | HR@10 | NDCG@5 | NDCG@10 | NDCG@10 / SASRec | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        k = members.get(name)
        sasrec = rows.get(f"SASRec x{k}", {}) if k else {}

        def ratio(key: str, split: str) -> str:
            if key not in row or not sasrec.get(key):
                return "-"
            interval = row.get("vs_sasrec", {}).get(split)
            return f"{row[key] / sasrec[key]:.3f}" + (f" ({interval['low']:.3f}-{interval['high']:.3f})" if interval else "")

        val = f"{row['val_ndcg@10_mean']:.4f} ± {row['val_ndcg@10_std']:.4f}" if "val_ndcg@10_mean" in row else "-"
        cells = [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" for m in METRICS]
        mark = " (chosen)" if name == winner else ""
        lines.append(f"| {name}{mark} | {k or '-'} | {val} | {ratio('val_ndcg@10_mean', 'validation')} | " + " | ".join(cells)
                     + f" | {ratio('ndcg@10_mean', 'test')} | {row.get('seconds', 0):.0f} |")
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


def mined_answers(mined: str) -> list[str]:
    """Overrides that make a run's mine stage ask what the mined run `mined` asked (its miners and prompts),
    so the answers in its cache (copied into the new run) answer every row."""
    source = load_config(Path(mined) / "config.yaml")
    return [f"mine.miners={json.dumps([m.model_dump(mode='json') for m in source.mine.miners])}", f"mine.prompts={source.mine.prompts}"]


def served_models(sft) -> int:
    """The models an arm ranks with: its members, or the one distilled from them (`sft.distill`)."""
    return 1 if sft.distill else sft.members


def run_arms(config: str, arms: list[tuple[str, list[str]]], seeds: list[int], common: list[str], out: Path,
             mined: str | None = None, grpo: bool = False, on_run=None) -> dict:
    """Every arm for every seed (see the module's docstring); `on_run(seed, arm, evaluate_report, seconds)`
    after each run. Returns the table's rows, each arm's member count, the arm validation chose and the
    validation curves."""
    stages = ["prepare", "tokenize", "sft", *(["grpo"] if grpo else []), "evaluate"]
    answers = mined_answers(mined) if mined else []
    members = {name: served_models(load_config(config, [*common, *overrides]).sft) for name, overrides in arms}
    results: dict[str, list[dict]] = {name: [] for name, _ in arms}
    seconds: dict[str, list[float]] = {name: [] for name, _ in arms}
    curves: dict[str, list[list[tuple[int, float]]]] = {name: [] for name, _ in arms}
    gains: dict[str, list[dict | None]] = {name: [] for name, _ in arms}
    with_sasrec: dict[int, RunStore] = {}  # each seed's run that trained SASRec (its first arm's)
    started_ray, first_run = False, None
    for seed in seeds:
        upstream: dict[str, RunStore] = {}
        for index, (name, overrides) in enumerate(arms):
            run_dir = out / f"seed{seed}" / name
            sasrec = [f"evaluate.sasrec.members={max(members.values())}"] if index == 0 else ["evaluate.sasrec.enabled=false"]
            cfg = load_config(config, [f"pipeline.stages=[{','.join(stages)}]", *answers, *common, *overrides, f"seed={seed}",
                                       f"storage.uri={run_dir}", *sasrec])
            if not started_ray:
                start_ray(cfg)
                ray.data.DataContext.get_current().enable_progress_bars = False
                started_ray = True
            key = cfg.section_hash("data", "tokenize")
            new = not run_dir.exists()
            store = RunStore(cfg)
            if new:
                reuse_upstream(store, upstream.get(key), first_run)
                if mined and "mine" in cfg.pipeline.stages:
                    shutil.copytree(Path(mined) / "cache" / "mine", Path(store.root) / "cache" / "mine")
            first_run = first_run or run_dir
            store.save_config(cfg)
            began = time.perf_counter()
            pipeline.run(cfg, store)
            seconds[name].append(time.perf_counter() - began)
            upstream.setdefault(key, store)
            report = store.require("evaluate").report
            validation = report.get("validation", {})
            # An arm's GR figure is the model it serves: evaluate's first GR row (the distilled one where sft.distill made one).
            served = next(model for model in report["results"] if model.startswith("GR"))
            for model, metrics in report["results"].items():
                if model in (served, "most-popular"):
                    results.setdefault(name if model == served else model, []).append(
                        {"test": metrics, **({"validation": validation[model]} if model in validation else {})})
            for size, figures in report.get("sasrec_by_members", {}).items():
                results.setdefault(f"SASRec x{size}", []).append({"test": figures["test"], **({"validation": figures["valid"]} if "valid" in figures else {})})
            gains[name].append(split_gains(store, served))
            with_sasrec.setdefault(seed, store)
            trained = store.require("sft").report
            # The served model's curve: the distilled one's where sft made one, else the first member's.
            curves[name].append([(h["epoch"] + 1, h["val_ndcg@10"]) for h in trained.get("distilled", trained)["history"]])
            print(f"quality: seed {seed} arm {name}: " + json.dumps(report["results"]), file=sys.stderr, flush=True)
            if on_run is not None:
                on_run(seed, name, report, seconds[name][-1])
    shown = [*members, *sorted({f"SASRec x{k}" for k in members.values()} | {"SASRec x1"}), "most-popular"]
    rows = {name: {**summarise(results[name]), **({"seconds": round(float(np.mean(seconds[name])), 1)} if name in seconds else {})}
            for name in shown if results.get(name)}
    samples = load_config(config, common).evaluate.bootstrap
    for name, k in members.items():
        intervals = pooled_intervals(gains[name], [split_gains(with_sasrec[seed], f"SASRec x{k}") for seed in seeds], samples)
        if name in rows and intervals:
            rows[name]["vs_sasrec"] = intervals
    return {"rows": rows, "members": members, "winner": chosen_arm(rows, list(members)), "curves": curves}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the dataset's run config")
    parser.add_argument("--arm", action="append", default=[], help='"NAME key=value ..." (repeatable; default: one arm, the config as is)')
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed (a later run adds seeds to a table)")
    parser.add_argument("--set", action="append", default=[], help="override for every arm")
    parser.add_argument("--grpo", action="store_true", help="run GRPO after SFT in every arm")
    parser.add_argument("--out", help="folder for the runs and the table (default bench/out/<config name>)")
    parser.add_argument("--mined", help="a run whose mining cache answers the mine stage of arms that run it "
                                        "(arm override pipeline.stages=[prepare,mine,label,...]): its LLM answers are "
                                        "copied into each new run folder and its miners configured, so no arm mines again")
    args = parser.parse_args()
    arms = [parse_arm(spec) for spec in (args.arm or ["default"])]
    if len({name for name, _ in arms}) != len(arms):
        raise SystemExit("quality: arm names must differ")
    out = Path(args.out or f"bench/out/{Path(args.config).stem}").resolve()
    seeds = list(range(args.first_seed, args.seeds))
    done = run_arms(args.config, arms, seeds, args.set, out, args.mined, args.grpo)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(markdown(args.config, seeds, done["rows"], done["members"], done["winner"]))
    plot(done["curves"], out / "quality_val.png")
    print(json.dumps({"bench": "quality", "config": args.config, "seeds": seeds, "grpo": args.grpo,
                      "arms": {name: overrides for name, overrides in arms}, "members": done["members"],
                      "chosen_by_validation": done["winner"], "results": done["rows"], "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
