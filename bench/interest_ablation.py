"""Do deep interests help? Arms x seeds on the synthetic catalog whose interests must be inferred.

    python bench/interest_ablation.py [--config configs/default.yaml] [--seeds 3] \
        [--arms plain,oracle,noisy,noisy_rldi,mined] [--noise 0.3] [--set key=value ...] [--out bench/out/interests]

Every arm of a seed starts from the same prepare (the catalog with `interest_text: indirect`: no
title or description names an interest), then runs tokenize -> sft -> grpo -> evaluate with the same
settings; only the item descriptors differ:

  plain       none: SIDs from title and description alone
  mined       the configured miners (on `mine.max_items` items; the rest stay plain)
  oracle      each item's true interests (a stand-in for a strong miner)
  noisy       the oracle's, with `--noise` of them replaced by interests the item does not have
  noisy_rldi  the same noisy descriptors labelled by the judge + classifier (the label stage): only
              those labelled good enter the SIDs, and GRPO's q term weighs hits by item quality

On the demo's dense catalog (~21 training interactions per item) the item head learns from co-occurrence
what the interests say; where items have few interactions they decide. A sparser catalog for that:
`--set data.synthetic.num_categories=8 --set data.synthetic.interests_per_category=6
--set data.synthetic.num_items=1500 --set data.synthetic.num_users=1000` (~8 per item; README, Results).

Prints one JSON line: per arm the mean and std over seeds of HR@10 and NDCG@10, the SFT model's
validation NDCG@10 and on how many seeds GRPO's weights were kept (they are only when GRPO improved
validation, so an arm's test figure can move with that choice alone), the SID purity
(normalised mutual information between the first SID level and each item's main interest) and
the descriptor precision (share of the descriptors that reach the SIDs that are true interests);
for noisy_rldi also the judge's label balance and agreement with the truth. Writes
`interest_ablation.md` into `--out`. A rerun with the same `--out` skips what is committed there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import ray

from deepinterestgr.config import load_config
from deepinterestgr.interests.labels import good_descriptors, truth_match
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import evaluate, grpo, label, mine, prepare, sft, tokenize
from ray_jobs.common import start_ray

ARMS = ("plain", "mined", "oracle", "noisy", "noisy_rldi")


def normalised_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI (arithmetic-mean normalisation) of two labelings of the same items."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa_, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa_, pb)[nz])).sum())
    entropy = lambda p: float(-(p[p > 0] * np.log(p[p > 0])).sum())  # noqa: E731
    denominator = (entropy(pa_) + entropy(pb)) / 2
    return mutual / denominator if denominator > 0 else 0.0


def truth_descriptors(truth: dict[str, list[str]], noise: float, seed: int) -> dict[str, list[dict]]:
    """Each item's true interests as descriptors, a `noise` share of them swapped for interests it lacks."""
    rng = np.random.default_rng(seed)
    every = sorted({i for interests in truth.values() for i in interests})
    out = {}
    for item_id in sorted(truth):
        descriptors = []
        for interest in truth[item_id]:
            if noise and rng.random() < noise:
                wrong = [i for i in every if i not in truth[item_id]]
                interest = wrong[int(rng.integers(len(wrong)))]
            descriptors.append({"descriptor": interest, "confidence": 1.0, "sources": ["truth" if not noise else "noisy-truth"]})
        out[item_id] = descriptors
    return out


def used_descriptors(store: RunStore) -> dict[str, list[str]]:
    """What reaches the SIDs per item: labelled-good descriptors after a label stage, else every mined one."""
    source = "label" if store.entry("label") is not None else "mine" if store.entry("mine") is not None else None
    if source is None:
        return {}
    return {r["item_id"]: good_descriptors(r)
            for r in store.read_table(source, "items").to_pylist()}


def run_arm(arm: str, cfg, store: RunStore, truth: dict[str, list[str]], noise: float) -> dict:
    if arm == "mined":
        mine.run(cfg, store)
    elif arm != "plain":
        mine.commit_descriptors(cfg, store, truth_descriptors(truth, 0.0 if arm == "oracle" else noise, cfg.seed), arm)
    if arm == "noisy_rldi":
        label.run(cfg, store)
    tokenize.run(cfg, store)
    sft.run(cfg, store)
    grpo.run(cfg, store)
    report = evaluate.run(cfg, store).report
    gr = next(m for name, m in report["results"].items() if name.startswith("GR"))
    sids = store.read_table("tokenize", "sids").to_pylist()
    purity = normalised_mutual_information(np.array([r["sid"][0] for r in sids]), np.array([truth[r["item_id"]][0] for r in sids]))
    used = used_descriptors(store)
    matched = [truth_match(d, truth[i]) for i, ds in used.items() for d in ds]
    grpo_report = store.require("grpo").report
    out = {"hr@10": gr["hr@10"], "ndcg@10": gr["ndcg@10"], "sid_purity": purity,
           # Validation before and after GRPO: an arm's test figure can move with GRPO's keep-or-not choice alone.
           "sft_val_ndcg@10": store.require("sft").report["val_ndcg@10"], "grpo_kept": grpo_report["best_epoch"] >= 0,
           "descriptor_precision": float(np.mean(matched)) if matched else None,
           "items_with_descriptors": sum(1 for ds in used.values() if ds), "baselines": {k: v for k, v in report["results"].items() if not k.startswith("GR")}}
    if arm == "noisy_rldi":
        labelled = store.require("label").report
        out["judge"] = {"positive_rate": labelled["judge_positive_rate"], "truth_agreement": (labelled.get("truth") or {}).get("agreement"),
                        "threshold": labelled["threshold"]}
    return out


def summarise(values: list[dict]) -> dict:
    out = {}
    for key in ("hr@10", "ndcg@10", "sft_val_ndcg@10", "sid_purity", "descriptor_precision"):
        column = [v[key] for v in values if v[key] is not None]
        if column:
            out[f"{key}_mean"], out[f"{key}_std"] = round(float(np.mean(column)), 4), round(float(np.std(column)), 4)
    out["grpo_kept"] = sum(v["grpo_kept"] for v in values)
    judges = [v["judge"] for v in values if "judge" in v]
    if judges:
        out["judge_positive_rate"] = round(float(np.mean([j["positive_rate"] for j in judges])), 4)
        agreements = [j["truth_agreement"] for j in judges if j["truth_agreement"] is not None]
        out["judge_truth_agreement"] = round(float(np.mean(agreements)), 4) if agreements else None
    return out


def markdown(seeds: list[int], rows: dict[str, dict], baselines: dict[str, float]) -> str:
    plain = rows.get("plain", {}).get("ndcg@10_mean")
    lines = [f"Interest ablation: synthetic catalog with indirect interests, seeds {seeds} (mean ± std).", "",
             "| arm | HR@10 | NDCG@10 | NDCG@10 / plain | SFT validation NDCG@10 | GRPO kept (seeds) | SID purity (NMI) | descriptor precision |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in rows.items():
        cell = lambda key: f"{r[key + '_mean']:.4f} ± {r[key + '_std']:.4f}" if key + "_mean" in r else "-"  # noqa: E731
        ratio = f"{r['ndcg@10_mean'] / plain:.2f}" if plain else "-"
        lines.append(f"| {arm} | {cell('hr@10')} | {cell('ndcg@10')} | {ratio} | {cell('sft_val_ndcg@10')} | {r['grpo_kept']} of {len(seeds)} "
                     f"| {cell('sid_purity')} | {cell('descriptor_precision')} |")
    for name, ndcg in baselines.items():
        lines.append(f"| {name} | | {ndcg:.4f} | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default="plain,oracle,noisy,noisy_rldi,mined")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="bench/out/interests")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"interest_ablation: unknown arms {unknown}; choose from {list(ARMS)}")
    out = Path(args.out).resolve()
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    baselines: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        for position, arm in enumerate(arms):
            run = out / f"seed{seed}" / arm
            # One model per arm: GRPO, which this ablation runs, tunes one model, not an ensemble.
            overrides = ["data.synthetic.interest_text=indirect", "sft.members=1", *args.set, f"seed={seed}", f"storage.uri={run}"]
            # SASRec and most-popular depend on the split only: scored once per seed, in the first arm.
            cfg = load_config(args.config, overrides + ([] if position == 0 else ["evaluate.sasrec.enabled=false"]))
            if cfg.data.loader != "synthetic":
                raise SystemExit("interest_ablation: needs the synthetic loader (its ground truth says which interests are true)")
            start_ray(cfg)
            base = out / f"seed{seed}" / "base"
            base_cfg = load_config(args.config, overrides[:-1] + [f"storage.uri={base}"])
            base_store = RunStore(base_cfg)
            prepare.run(base_cfg, base_store)
            store = RunStore(cfg)
            store.adopt(base_store, ("prepare",))
            store.save_config(cfg)
            truth = {r["item_id"]: r["interests"] for r in store.read_table("prepare", "item_truth").to_pylist()}
            print(f"interest_ablation: seed {seed} arm {arm} ...", file=sys.stderr, flush=True)
            result = run_arm(arm, cfg, store, truth, args.noise)
            results[arm].append(result)
            for name, metrics in result["baselines"].items():
                baselines.setdefault(name, []).append(metrics["ndcg@10"])
    rows = {arm: summarise(values) for arm, values in results.items()}
    table = markdown(list(range(args.seeds)), rows, {k: float(np.mean(v)) for k, v in baselines.items()})
    (out / "interest_ablation.md").write_text(table)
    print(table, file=sys.stderr)
    print(json.dumps({"bench": "interest_ablation", "config": args.config, "seeds": args.seeds, "noise": args.noise, "arms": rows,
                      "baselines_ndcg@10": {k: round(float(np.mean(v)), 4) for k, v in baselines.items()}, "out": str(out)}))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
