"""`dig prepare`: raw data -> items and split interactions, as Ray Datasets and committed Parquet.

The file loaders (recbole, jsonl, amazon) and a synthetic catalog of one user block parse or draw
in the driver and hand the interactions to Ray Data for the split; the parquet loader, and a synthetic
catalog of several user blocks (drawn by one Ray task per block), keep them in Ray Data from the start
(`parquet_input` for the k-core and the split).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from deepinterestgr.config import RunConfig, SyntheticConfig
from deepinterestgr.data.filtering import ORDER_COLUMN, kcore, leave_last_out, partition_by_user
from deepinterestgr.data.registry import load_raw
from deepinterestgr.data.synthetic import UserDraws, synthetic_catalog, synthetic_users, user_blocks
from deepinterestgr.data.tables import items_table
from deepinterestgr.errors import DataError
from deepinterestgr.storage.fingerprint import fingerprint_listing, fingerprint_paths
from deepinterestgr.storage.runstore import ManifestEntry, RunStore, StageAttempt
from ray_jobs import parquet_input
from ray_jobs.common import stage_main, to_table, up_to_date

STAGE = "prepare"


@dataclass
class Prepared:
    """The prepare stage's output: the commit, and its tables as Ray Datasets."""

    entry: ManifestEntry
    items: ray.data.Dataset
    interactions: ray.data.Dataset


@dataclass
class Loaded:
    """What a loader path hands to the commit: the catalog, the split interactions and the report's facts."""

    items: pa.Table
    split: ray.data.Dataset
    facts: dict
    extras: dict[str, pa.Table | ray.data.Dataset]


def _counts(interactions: pa.Table, items: pa.Table) -> dict[str, int]:
    return {
        "users": pc.count_distinct(interactions.column("user_id")).as_py(),
        "items": items.num_rows,
        "interactions": interactions.num_rows,
    }


def _split_sizes(batch: pa.Table) -> pa.Table:
    return batch.group_by("split").aggregate([("split", "count")])


def split_sizes(data: ray.data.Dataset) -> dict[str, int]:
    """Rows per split value, counted block by block (no shuffle)."""
    sizes: dict[str, int] = {}
    for row in to_table(data.map_batches(_split_sizes, batch_format="pyarrow")).to_pylist():
        sizes[row["split"]] = sizes.get(row["split"], 0) + row["split_count"]
    return sizes


def _with_images(items: pa.Table, images: dict[str, bytes], attempt: StageAttempt) -> pa.Table:
    """Write each item's image into the run and point its `image_uri` at it."""
    if not images:
        return items
    uris = []
    for item_id in items.column("item_id").to_pylist():
        image = images.get(item_id)
        if image is not None:
            attempt.write_bytes(f"images/{item_id}.png", image)
        uris.append(attempt.uri(f"images/{item_id}.png") if image is not None else None)
    return items.set_column(items.schema.get_field_index("image_uri"), "image_uri", pa.array(uris, pa.string()))


def _in_driver(cfg: RunConfig, attempt: StageAttempt) -> Loaded:
    """A file loader's tables, k-core in the driver, the split on Ray Data blocks of whole users."""
    raw = load_raw(cfg.data, cfg.seed)
    before = _counts(raw.interactions, raw.items)
    items = _with_images(raw.items, raw.images, attempt)
    interactions, passes = kcore(raw.interactions, cfg.data.kcore)
    if interactions.num_rows == 0:
        raise DataError(f"data.kcore={cfg.data.kcore} removed every interaction; lower it")
    if cfg.data.kcore > 1:
        items = items.filter(pc.is_in(items.column("item_id"), value_set=pc.unique(interactions.column("item_id"))))
    ordered = interactions.append_column(ORDER_COLUMN, pa.array(np.arange(interactions.num_rows)))
    split = (
        ray.data.from_arrow(partition_by_user(ordered, cfg.data.block_rows))
        .map_batches(leave_last_out, batch_size=None, batch_format="pyarrow")
        .drop_columns([ORDER_COLUMN])
    )
    facts = {"order": raw.order_source, "before_filter": before, "passes": passes, "after_filter": _counts(interactions, items),
             "dropped_rows": raw.dropped}
    return Loaded(items, split, facts, raw.extras)


@ray.remote(num_returns=2)
def _draw_users(s: SyntheticConfig, seed: int, draws: UserDraws, block: int) -> tuple[pa.Table, pa.Table]:
    return synthetic_users(s, seed, draws, block)


def _synthetic_blocks(cfg: RunConfig, attempt: StageAttempt) -> Loaded:
    """A synthetic catalog of several user blocks: the catalog in the driver, one Ray task per user block."""
    s = cfg.data.synthetic
    catalog = synthetic_catalog(s, cfg.seed)
    shared = ray.put(catalog.draws)
    drawn = [_draw_users.remote(s, cfg.seed, shared, block) for block in range(user_blocks(s))]
    items = _with_images(items_table(catalog.items, "synthetic"), catalog.images, attempt)
    extras = {"item_truth": pa.Table.from_pylist(catalog.item_truth),
              "user_truth": ray.data.from_arrow_refs([truth for _, truth in drawn])}
    data = ray.data.from_arrow_refs([interactions for interactions, _ in drawn])
    return _through_ray_data(cfg, items, data, "synthetic interactions", "timestamp", extras)


def _through_ray_data(cfg: RunConfig, items: pa.Table, data: ray.data.Dataset, source: str, order: str,
                      extras: dict[str, pa.Table | ray.data.Dataset]) -> Loaded:
    """Interactions that stay in Ray Data blocks through the unknown-item check, the k-core and the split;
    `source` names them in errors."""
    partitions = max(1, int(ray.available_resources().get("CPU", 1)))
    data = data.materialize()
    total = data.count()
    dropped: dict[str, int] = {}
    data = parquet_input.known_items(data, items, cfg.data.drop_bad_rows, dropped, source)
    core = parquet_input.kcore(data, cfg.data.kcore, partitions)
    rows = core.data.count()
    if rows == 0:
        raise DataError(f"data.kcore={cfg.data.kcore} removed every interaction; lower it" if cfg.data.kcore > 1
                        else f"{source}: none")
    before = {"users": core.users_before, "items": items.num_rows, "interactions": total}
    if core.items is not None:
        items = items.filter(pc.is_in(items.column("item_id"), value_set=core.items))
    after = {"users": core.users_after, "items": items.num_rows, "interactions": rows}
    facts = {"order": order, "before_filter": before, "passes": core.passes, "after_filter": after, "dropped_rows": dropped}
    return Loaded(items, parquet_input.split(core.data, rows, cfg.data.block_rows), facts, extras)


def _load(store: RunStore, entry: ManifestEntry) -> Prepared:
    items = ray.data.read_parquet(store.table_path(STAGE, "items"), filesystem=store.fs)
    interactions = ray.data.read_parquet(store.table_path(STAGE, "interactions"), filesystem=store.fs)
    return Prepared(entry, items, interactions)


def run(cfg: RunConfig, store: RunStore) -> Prepared:
    """Load, filter, split and commit; skipped when the same data and config were already committed."""
    if cfg.data.loader == "synthetic":
        inputs = {"raw": "synthetic"}
    elif cfg.data.loader == "parquet":
        inputs = {"raw": fingerprint_listing(*parquet_input.locate(cfg, "items"), *parquet_input.locate(cfg, "interactions"))}
    else:
        inputs = {"raw": fingerprint_paths(cfg.data.path, cfg.data.meta_path)}
    config_hash = cfg.section_hash("data")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return _load(store, entry)

    with store.stage(STAGE, config_hash, inputs) as attempt:
        if cfg.data.loader == "parquet":
            loaded = _through_ray_data(cfg, parquet_input.read_items(cfg), parquet_input.read_interactions(cfg),
                                       f"{cfg.data.path} interactions", "timestamp, then item id", {})
        elif cfg.data.loader == "synthetic" and user_blocks(cfg.data.synthetic) > 1:
            loaded = _synthetic_blocks(cfg, attempt)
        else:
            loaded = _in_driver(cfg, attempt)
        split = loaded.split.materialize()
        split.write_parquet(attempt.path("interactions"), filesystem=store.fs)
        attempt.write_table("items", loaded.items)
        for name, table in loaded.extras.items():
            if isinstance(table, ray.data.Dataset):
                table.write_parquet(attempt.path(name), filesystem=store.fs)
            else:
                attempt.write_table(name, table)

        sizes = split_sizes(split)
        facts = loaded.facts
        report = {
            "run": store.uri,
            "loader": cfg.data.loader,
            "order": facts["order"],
            "before_filter": facts["before_filter"],
            "kcore": {"k": cfg.data.kcore, "passes": facts["passes"]},
            "after_filter": facts["after_filter"],
            "dropped_rows": facts["dropped_rows"],
            "split": {name: sizes.get(name, 0) for name in ("train", "valid", "test")},
            "evaluated_users": sizes.get("test", 0),
        }
        rows = {"items": loaded.items.num_rows, "interactions": sum(sizes.values())}
        rows.update({name: table.count() if isinstance(table, ray.data.Dataset) else table.num_rows
                     for name, table in loaded.extras.items()})
        entry = attempt.commit(rows, report)
    return _load(store, entry)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
