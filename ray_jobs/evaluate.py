"""`dig evaluate`: HR@K / NDCG@K on the test split for the generative recommender and its baselines (overall and by target popularity)."""

from __future__ import annotations

import functools
import sys

import numpy as np
import pyarrow as pa
import ray
import torch

from actors.recommender import TargetRanker
from deepinterestgr.baselines.sasrec import FitData, FitJob, FitMap, SASRec, ensemble_ranks, fit_sasrec_members
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import StorageError
from deepinterestgr.metrics import metrics_by_popularity, ndcg_gains, ranking_metrics, ratio_interval
from deepinterestgr.recommender.artifacts import Catalog, item_texts, load_catalog, load_format, load_meta, load_model, user_interests
from deepinterestgr.recommender.inputs import split_rows
from deepinterestgr.recommender.sequences import most_popular, training_counts
from deepinterestgr.run_report import interval_lines
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import accelerator, collect, stage_main, up_to_date

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


def ranks_table(ranks: dict[str, dict[str, np.ndarray]], rows: dict[str, list[dict]], user_ids: list[str]) -> pa.Table:
    """Every user's 0-based target rank (-1 = not ranked) under every model, a row per split and user:
    what the report's figures and intervals are computed from, for a reader's own tests."""
    columns: dict[str, list] = {"split": [], "user_id": [], "target": []}
    by_name: dict[str, list[np.ndarray]] = {}
    for split, by_model in ranks.items():
        columns["split"] += [split] * len(rows[split])
        columns["user_id"] += [user_ids[r["user"]] for r in rows[split]]
        columns["target"] += [r["target"] for r in rows[split]]
        for name, r in by_model.items():
            by_name.setdefault(name, []).append(np.asarray(r, dtype=np.int64))
    return pa.table({**columns, **{name: np.concatenate(parts) for name, parts in by_name.items()}})


def ratio_intervals(ranks: dict[str, np.ndarray], gr: str, k: int, samples: int, seed: int) -> dict[str, dict[str, float]]:
    """The served GR model's NDCG@k as a ratio to each SASRec row's (one that ranks no target in its top k
    has none), with its paired bootstrap interval over the users."""
    gains = {name: ndcg_gains(r, k) for name, r in ranks.items() if name == gr or name.startswith("SASRec")}
    return {name: {**ratio_interval([gains[gr]], [g], samples, seed), "metric": f"ndcg@{k}"} for name, g in gains.items()
            if name != gr and g.any()}


def example_users(store: RunStore, catalog: Catalog, rows: list[dict], top: np.ndarray, ranks: np.ndarray,
                  interests: dict[str, str], count: int, seed: int) -> list[dict]:
    """`count` seeded test users as a person reads them: last items, GR's top items with their mined
    interests, the target and where GR ranked it (1-based; None = not in the beam)."""
    if not count or not rows:
        return []
    texts = {t.row: t for t in item_texts(store, catalog.item_ids)}

    def item(row: int, descriptors: bool = False) -> dict:
        text = texts.get(row)
        out = {"item_id": catalog.item_ids[row], "title": text.title if text else ""}
        return {**out, "interests": list(text.descriptors[:3]) if text else []} if descriptors else out

    chosen = sorted(np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False).tolist())
    out = []
    for k in chosen:
        user_id = catalog.sequences.user_ids[rows[k]["user"]]
        out.append({"user_id": user_id, "history": [item(r) for r in rows[k]["history"][-5:]], "interests": interests.get(user_id),
                    "top": [item(int(r), descriptors=True) for r in top[k] if r >= 0], "target": item(rows[k]["target"]),
                    "rank": int(ranks[k]) + 1 if ranks[k] >= 0 else None})
    return out


def rank_users(every: list[dict], load, catalog: Catalog, fmt, e, name: str) -> pa.Table:
    """Every row of `every` (split, key, prompt, target, history) ranked by the model `load()` gives, on a
    Ray Data actor pool: its target's rank and top items, sorted by split and key; each user exactly once."""
    ranked = ray.data.from_items(every).map_batches(
        TargetRanker,
        fn_constructor_kwargs={
            "load_model": load, "trie_bytes": catalog.trie_bytes, "vocab": fmt.vocab, "pad_id": fmt.pad_id,
            "beam_width": e.beam_width, "exclude_history": e.exclude_history, "device": accelerator(e.num_gpus),
            "item_weight": fmt.item_weight,
        },
        batch_size=e.batch_size, compute=ray.data.ActorPoolStrategy(size=e.actors), num_gpus=e.num_gpus,
    )
    splits = " and ".join(dict.fromkeys(r["split"] for r in every))
    table = collect(ranked.select_columns(["split", "key", "rank", "top"]), f"evaluate: {name} ranking ({splits} users)",
                    "users", len(every)).sort_by([("split", "ascending"), ("key", "ascending")])
    # Exactly once: a ranking actor that died is replaced and its batch ranked again, never twice.
    pairs = set(zip(table.column("split").to_pylist(), table.column("key").to_pylist()))
    if table.num_rows != len(every) or len(pairs) != len(every):
        raise StorageError(f"evaluate: ranking returned {table.num_rows} rows ({len(pairs)} distinct) for {len(every)} users")
    return table


def _fit_in_task(data: FitData, job: FitJob, threads: int) -> tuple[SASRec, list[dict], float]:
    torch.set_num_threads(threads)  # a pooled Ray worker keeps the last task's count otherwise
    return data(job)


def ray_fit_map(cpus: int) -> FitMap:
    """SASRec fits as Ray tasks of `cpus` CPUs and torch threads each: as many at once as the cluster holds."""
    task = ray.remote(num_cpus=cpus)(_fit_in_task)

    def fit_map(data: FitData, jobs: list[FitJob]) -> list[tuple[SASRec, list[dict], float]]:
        shared = ray.put(data)
        return ray.get([task.remote(shared, job, cpus) for job in jobs])

    return fit_map


def sasrec_members(cfg: RunConfig, gr_members: int) -> int:
    """How many SASRec models rank together: evaluate.sasrec.members, else as many as the GR model has (equal cost)."""
    return cfg.evaluate.sasrec.members or gr_members


def run(cfg: RunConfig, store: RunStore) -> ManifestEntry:
    model_stage = "grpo" if store.entry("grpo") is not None else "sft"
    inputs = store.inputs(("prepare", "tokenize", model_stage), optional=("mine",))
    config_hash = cfg.section_hash("evaluate", "sft")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return entry
    e = cfg.evaluate
    catalog = load_catalog(store)
    fmt = load_format(store, model_stage, catalog, cfg.sft.backbone)
    interests = user_interests(store)
    seqs = catalog.sequences
    splits = ("valid", "test") if e.validation else ("test",)
    rows = {split: split_rows(catalog, fmt, interests, split) for split in splits}
    histories = {split: [r["history"] for r in rows[split]] for split in splits}
    targets = {split: np.array([r["target"] for r in rows[split]], dtype=np.int64) for split in splits}
    # The model's own member count (its folder says), not the config's: a run evaluated with another config still counts right.
    meta = load_meta(store, model_stage)
    members = meta.members
    ensemble = f"GR ({model_stage}) x{members}"
    # The model that serves comes first: the one distilled from the members where sft made one.
    gr = f"GR ({model_stage}) x1 distilled" if meta.distilled else ensemble
    with store.stage(STAGE, config_hash, inputs) as attempt:
        every = [{**r, "key": k, "split": split} for split in splits for k, r in enumerate(rows[split])]
        table = rank_users(every, functools.partial(load_model, store, model_stage), catalog, fmt, e, gr)
        split_of = table.column("split").to_numpy(zero_copy_only=False)
        popular = most_popular(seqs, len(catalog.item_ids))
        ranks = {split: {gr: table.column("rank").to_numpy()[split_of == split]} for split in splits}
        if meta.distilled:
            together = rank_users(every, functools.partial(load_model, store, model_stage, members=True), catalog, fmt, e, ensemble)
            for split in splits:
                ranks[split][ensemble] = together.column("rank").to_numpy()[split_of == split]
        test_top = np.stack([np.asarray(t, dtype=np.int64) for t in table.column("top").to_pylist()])[split_of == "test"]
        details = {"examples": example_users(store, catalog, rows["test"], test_top, ranks["test"][gr], interests, e.examples, cfg.seed)}
        # Every SASRec size's ranks go to the ranks table (a benchmark meets each arm with its own count).
        sasrec_ranks = {split: {} for split in splits}
        if e.sasrec.enabled:
            k = sasrec_members(cfg, members)
            fit = fit_sasrec_members(seqs.train, seqs.valid, len(catalog.item_ids), e.sasrec, e.sasrec.grid, k, cfg.seed,
                                     label="evaluate: SASRec", fit_map=ray_fit_map(e.sasrec.cpus_per_fit))
            chosen = {key: getattr(fit.shape, key) for key in e.sasrec.grid}
            print(f"evaluate: SASRec x{k}: {chosen or 'the configured settings'} (best validation NDCG@10 of {len(fit.grid) or 1} "
                  f"settings); {fit.fits} fits in {fit.seconds:.0f} s", file=sys.stderr)
            # Every ensemble size 1..K, so a benchmark can set GR with fewer members against SASRec at equal cost.
            by_members = {str(size): {} for size in range(k, 0, -1)}
            for split in splits:
                sized = ensemble_ranks(fit.models, histories[split], targets[split], exclude_history=e.exclude_history)
                for size in range(k, 0, -1):
                    by_members[str(size)][split] = ranking_metrics(sized[size - 1], e.ks)
                ranks[split].update({f"SASRec x{size}": sized[size - 1] for size in dict.fromkeys((k, 1))})
                sasrec_ranks[split] = {f"SASRec x{size}": sized[size - 1] for size in range(k, 0, -1)}
            details["sasrec_by_members"] = by_members
            details["sasrec_history"] = fit.history
            details["sasrec"] = {"members": k, "chosen": chosen,
                                 "grid": fit.grid, "fits": fit.fits, "seconds": round(fit.seconds, 1)}
        for split in splits:
            ranks[split]["most-popular"] = popularity_ranks(popular, targets[split], histories[split] if e.exclude_history else None)
        results = {name: ranking_metrics(r, e.ks) for name, r in ranks["test"].items()}
        if e.validation:
            details["validation"] = {name: ranking_metrics(r, e.ks) for name, r in ranks["valid"].items()}
        attempt.write_table("ranks", ranks_table({split: {**ranks[split], **sasrec_ranks[split]} for split in splits}, rows, seqs.user_ids))
        if e.bootstrap and e.sasrec.enabled:
            intervals = {"validation" if split == "valid" else split: ratio_intervals(ranks[split], gr, max(e.ks), e.bootstrap, cfg.seed)
                         for split in splits}
            details["intervals"] = {split: by_model for split, by_model in intervals.items() if by_model}
        if e.popularity_groups:
            counts = training_counts(seqs, len(catalog.item_ids))[targets["test"]]
            details["by_target_popularity"] = metrics_by_popularity(ranks["test"], counts, e.popularity_groups, e.ks)
        report = {"model_stage": model_stage, "members": members, "distilled": meta.distilled, "test_users": len(rows["test"]),
                  "items": len(catalog.item_ids), "beam_width": e.beam_width, "exclude_history": e.exclude_history,
                  "results": results, **details}
        markdown = "Test users:\n\n" + markdown_table(results)
        if e.validation:
            markdown = f"Validation users:\n\n{markdown_table(details['validation'])}\n{markdown}"
        if details.get("intervals"):
            markdown += "\n" + "\n".join(interval_lines(details["intervals"], gr)) + "\n"
        if e.popularity_groups:
            markdown += "\n" + popularity_table(details["by_target_popularity"], f"ndcg@{max(e.ks)}")
        attempt.write_bytes("report.md", markdown.encode())
        print(markdown, file=sys.stderr)
        return attempt.commit({"test_users": len(rows["test"])}, report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
