"""`dig evaluate`: HR@K / NDCG@K on the test split for the generative recommender and its baselines (overall and by target popularity)."""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import ray

from actors.recommender import TargetRanker
from deepinterestgr.baselines.sasrec import epoch_progress, fit_sasrec, sasrec_ranks
from deepinterestgr.config import RunConfig
from deepinterestgr.metrics import metrics_by_popularity, ranking_metrics
from deepinterestgr.recommender.artifacts import Catalog, load_catalog, load_format, load_model, user_interests
from deepinterestgr.recommender.sequences import most_popular, training_counts
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import accelerator, collect, stage_main

STAGE = "evaluate"


def popularity_ranks(ranking: np.ndarray, targets: np.ndarray, histories: list[list[int]] | None) -> np.ndarray:
    """Full-ranking position of each target in the popularity order (history removed when given)."""
    position = np.empty_like(ranking)
    position[ranking] = np.arange(len(ranking))
    ranks = position[targets]
    if histories is not None:
        ranks = np.array([r - int((position[list(set(h))] < r).sum()) for r, h in zip(ranks, histories)])
    return ranks


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    keys = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |" for name, m in results.items()]
    return "\n".join(lines) + "\n"


def popularity_table(rows: list[dict], metric: str) -> str:
    """One metric per model (rows) and target-popularity group (columns)."""
    models = list(rows[0]["models"])
    lines = [f"{metric} by how often the test target occurs in training:", "",
             "| model | " + " | ".join(f"{r['target_count']} ({r['users']} users)" for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    lines += [f"| {m} | " + " | ".join(f"{r['models'][m][metric]:.4f}" for r in rows) + " |" for m in models]
    return "\n".join(lines) + "\n"


def test_rows(catalog: Catalog, fmt, interests: dict[str, str]) -> list[dict]:
    """One row per user with a test target: the prompt from their training and validation items (the
    history), and the target."""
    seqs = catalog.sequences
    users = [u for u in range(len(seqs.user_ids)) if seqs.test[u] >= 0]
    histories = [seqs.train[u] + ([int(seqs.valid[u])] if seqs.valid[u] >= 0 else []) for u in users]
    return [{"user": u, "prompt": fmt.prompt(h, interests.get(seqs.user_ids[u])), "history": h, "target": int(seqs.test[u])}
            for u, h in zip(users, histories)]


def run(cfg: RunConfig, store: RunStore) -> ManifestEntry:
    model_stage = "grpo" if store.entry("grpo") is not None else "sft"
    inputs = store.inputs(("prepare", "tokenize", model_stage), optional=("mine",))
    config_hash = cfg.section_hash("evaluate", "sft")
    if store.is_fresh(STAGE, config_hash, inputs):
        print(f"evaluate: up to date in {store.uri}; skipped", file=sys.stderr)
        return store.require(STAGE)
    e = cfg.evaluate
    catalog = load_catalog(store)
    fmt = load_format(store, model_stage, catalog, cfg.sft.backbone)
    interests = user_interests(store)
    seqs = catalog.sequences
    rows = test_rows(catalog, fmt, interests)
    histories = [r["history"] for r in rows]
    targets = np.array([r["target"] for r in rows], dtype=np.int64)
    with store.stage(STAGE, config_hash, inputs) as attempt:
        ranked = ray.data.from_items(rows).map_batches(
            TargetRanker,
            fn_constructor_kwargs={
                "load_model": functools.partial(load_model, store, model_stage), "trie_bytes": catalog.trie_bytes,
                "vocab": fmt.vocab, "pad_id": fmt.pad_id, "beam_width": e.beam_width,
                "exclude_history": e.exclude_history, "device": accelerator(e.num_gpus), "item_weight": fmt.item_weight,
            },
            batch_size=e.batch_size, compute=ray.data.ActorPoolStrategy(size=e.actors), num_gpus=e.num_gpus,
        )
        table = collect(ranked.select_columns(["user", "rank"]), f"evaluate: GR ({model_stage}) ranking", "users", len(rows)).sort_by("user")
        gr_ranks = table.column("rank").to_numpy()
        pop = popularity_ranks(most_popular(seqs, len(catalog.item_ids)), targets, histories if e.exclude_history else None)
        ranks = {f"GR ({model_stage})": gr_ranks, "most-popular": pop}
        details = {}
        if e.sasrec.enabled:
            sasrec, details["sasrec_history"] = fit_sasrec(seqs.train, seqs.valid, len(catalog.item_ids), e.sasrec, cfg.seed,
                                                           on_epoch=epoch_progress("evaluate: SASRec", e.sasrec.epochs))
            ranks["SASRec"] = sasrec_ranks(sasrec, histories, targets, exclude_history=e.exclude_history)
        results = {name: ranking_metrics(r, e.ks) for name, r in ranks.items()}
        if e.popularity_groups:
            counts = training_counts(seqs, len(catalog.item_ids))[targets]
            details["by_target_popularity"] = metrics_by_popularity(ranks, counts, e.popularity_groups, e.ks)
        report = {"model_stage": model_stage, "test_users": len(rows), "items": len(catalog.item_ids),
                  "beam_width": e.beam_width, "exclude_history": e.exclude_history, "results": results, **details}
        attempt.write_bytes("report.json", json.dumps(report, indent=2).encode())
        markdown = markdown_table(results)
        if e.popularity_groups:
            markdown += "\n" + popularity_table(details["by_target_popularity"], f"ndcg@{max(e.ks)}")
        attempt.write_bytes("report.md", markdown.encode())
        print(markdown, file=sys.stderr)
        return attempt.commit({"test_users": len(rows)}, report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
