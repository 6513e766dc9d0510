"""`dig pipeline`: prepare -> mine -> label -> tokenize -> sft -> grpo -> evaluate in one Ray job.

The item dataset is built once and handed from stage to stage through the object store (mining adds
captions and descriptors, labelling adds reward labels, tokenizing reads it for embeddings and
SIDs). Every stage still commits its Parquet output and manifest, so finished stages are skipped and
a failed run resumes from the first unfinished one. `--stages a,b` (or `pipeline.stages`) runs a
subset; label needs mine.
"""

from __future__ import annotations

import json
import sys
import time

import ray

from deepinterestgr.config import ConfigError, PipelineConfig, RunConfig
from deepinterestgr.run_report import interval_lines, label_balance
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import evaluate, grpo, label, mine, prepare, report, sft, tokenize
from ray_jobs.common import USER_ERRORS, arg_parser, config_from, start_ray
from ray_jobs.console import log_file, route_ray_logs

# The default runs every stage, in pipeline order.
ORDER = PipelineConfig().stages


def check_stages(cfg: RunConfig, store: RunStore) -> None:
    """Refuse a label stage with nothing mined, before any work starts (the config checks the names)."""
    stages = cfg.pipeline.stages
    if "label" in stages and "mine" not in stages and store.entry("mine") is None:
        raise ValueError("pipeline.stages: label needs mine (add mine, or run `dig mine` first)")


def run(cfg: RunConfig, store: RunStore) -> dict:
    """Run `pipeline.stages` in pipeline order; returns seconds per stage and the summary figures."""
    stages = cfg.pipeline.stages
    seconds: dict[str, float] = {}
    items: ray.data.Dataset | None = None
    for stage in [s for s in ORDER if s in stages]:
        print(f"pipeline: {stage} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if stage == "prepare":
            items = prepare.run(cfg, store).items.materialize()
        elif stage == "mine":
            items = ray.data.from_arrow(mine.run(cfg, store, items).items)
        elif stage == "label":
            items = ray.data.from_arrow(label.run(cfg, store, items).items)
        elif stage == "tokenize":
            tokenize.run(cfg, store, items)
        else:
            {"sft": sft.run, "grpo": grpo.run, "evaluate": evaluate.run}[stage](cfg, store)
        seconds[stage] = round(time.perf_counter() - started, 1)
        print(f"pipeline: {stage} done in {seconds[stage]:.0f} s", file=sys.stderr, flush=True)
    return {"run": store.uri, "seconds": seconds, **summary(store), "report": report.write(store)}


def summary(store: RunStore) -> dict:
    """Mining, SID and ranking figures of whatever stages the run holds."""
    out: dict = {}
    if (entry := store.entry("mine")) is not None:
        r = entry.report
        miners = r.get("miners", {})
        out["mining"] = {"items_mined": r.get("items_mined"), "items_with_descriptors": r.get("items_with_descriptors"),
                         "descriptors_per_item": r.get("descriptors_per_item"), "failures": r.get("failures"),
                         "items_per_s": {name: m.get("rows_per_s") for name, m in miners.items()}}
    if (entry := store.entry("label")) is not None:
        rate, degenerate = label_balance(entry.report)
        out["labels"] = {"judge": entry.report.get("judge_mode"), "judge_positive_rate": rate, "degenerate": degenerate,
                         "holdout_agreement": None if degenerate else entry.report["holdout"].get("agreement"),
                         "truth_agreement": None if degenerate else (entry.report.get("truth") or {}).get("agreement"),
                         "mean_item_quality": entry.report.get("mean_item_quality")}
    if (entry := store.entry("tokenize")) is not None:
        out["sids"] = {"collision_rate_before": entry.report.get("collision_rate_before"),
                       "collision_rate_after": entry.report.get("collision_rate_after")}
    if (entry := store.entry("evaluate")) is not None:
        out["test"] = {name: {k: round(v, 4) for k, v in metrics.items() if k.endswith("@10")}
                       for name, metrics in entry.report["results"].items()}
        if "validation" in entry.report:
            out["validation"] = {name: {k: round(v, 4) for k, v in metrics.items() if k.endswith("@10")}
                                 for name, metrics in entry.report["validation"].items()}
        if "intervals" in entry.report:
            out["intervals"] = entry.report["intervals"]
    return out



def table(result: dict) -> str:
    """The summary a person reads at the end of the demo."""
    validation = result.get("validation", {})
    lines = ["", "| model | validation NDCG@10 | test HR@10 | test NDCG@10 |", "|---|---|---|---|"]
    for name, metrics in result.get("test", {}).items():
        chosen_on = f"{validation[name]['ndcg@10']:.4f}" if name in validation else "-"
        lines.append(f"| {name} | {chosen_on} | {metrics['hr@10']:.4f} | {metrics['ndcg@10']:.4f} |")
    if result.get("intervals"):
        lines += ["", *interval_lines(result["intervals"], next(name for name in result["test"] if name.startswith("GR")))]
    if "mining" in result:
        m = result["mining"]
        lines.append(f"\nmining: {m['items_with_descriptors']}/{m['items_mined']} items got descriptors "
                     f"({m['descriptors_per_item']} per item), {m['failures']} failures, items/s {m['items_per_s']}")
    if "labels" in result:
        labels = result["labels"]
        if labels["degenerate"]:
            lines.append(f"labels: the judge is degenerate (label 1 on {labels['judge_positive_rate']:.0%} of pairs): no agreement claimed")
        else:
            truth = f"; the judge agrees with the true interests on {labels['truth_agreement']:.0%} of pairs" \
                if labels.get("truth_agreement") is not None else ""
            lines.append(f"labels by {labels['judge']}: {labels['judge_positive_rate']:.0%} of judged pairs good{truth}; classifier agrees "
                         f"with the judge on {labels['holdout_agreement']} of held-out pairs; mean item quality {labels['mean_item_quality']}")
    if "sids" in result:
        s = result["sids"]
        lines.append(f"SIDs: collisions {s['collision_rate_before']:.2%} before disambiguation, {s['collision_rate_after']:.2%} after")
    lines.append("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))
    lines.append(f"\nthe run lives in {result['run']}; its report (tables and plots): {result['report']}"
                 f"\nserve it: .venv/bin/dig serve --run {result['run']}")
    return "\n".join(lines)


def remembered(cfg: RunConfig, args) -> RunConfig:
    """What the run's config.yaml keeps: `--stages` picks this invocation's stages only, so the run's own
    stages stay there for the next command that starts from the file (`--run` without `--config`)."""
    if not args.stages:
        return cfg
    try:
        stages = config_from(args, announce=False).pipeline.stages
    except ConfigError:  # the subset was what made the config valid (an ensemble without grpo): keep it
        return cfg
    return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"stages": stages})})


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("pipeline", "Run prepare -> mine -> label -> tokenize -> sft -> grpo -> evaluate in one Ray job; "
                                     "finished stages are skipped.")
    parser.add_argument("--stages", help=f"comma-separated subset to run (= --set pipeline.stages=[...]); of {','.join(ORDER)}")
    args = parser.parse_args(argv)
    try:
        cfg = config_from(args, *([f"pipeline.stages=[{args.stages}]"] if args.stages else []))
        store = RunStore(cfg)
        check_stages(cfg, store)
        with store.lease("pipeline"):
            store.save_config(remembered(cfg, args))
            route_ray_logs(log_file(store, "pipeline"))
            start_ray(cfg)
            result = run(cfg, store)
    except (*USER_ERRORS, ValueError) as exc:
        print(f"dig pipeline: error: {exc}", file=sys.stderr)
        return 2
    # Disconnect first so the workers' last progress lines reach the terminal before the summary, not after it.
    ray.shutdown()
    # One line of JSON for scripts (the same figures are in the table below and in the run's report).
    print(json.dumps(result, default=str))
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
