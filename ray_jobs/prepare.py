"""`dig prepare`: raw data -> items and split interactions, as Ray Datasets and committed Parquet."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from deepinterestgr.config import RunConfig
from deepinterestgr.data.filtering import ORDER_COLUMN, kcore, leave_last_out, partition_by_user, split_counts
from deepinterestgr.data.registry import load_raw
from deepinterestgr.errors import DataError
from deepinterestgr.storage.fingerprint import fingerprint_paths
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import stage_main, to_table

STAGE = "prepare"


@dataclass
class Prepared:
    """The prepare stage's output: the commit, and its tables as Ray Datasets."""

    entry: ManifestEntry
    items: ray.data.Dataset
    interactions: ray.data.Dataset


def _counts(interactions: pa.Table, items: pa.Table) -> dict[str, int]:
    return {
        "users": pc.count_distinct(interactions.column("user_id")).as_py(),
        "items": items.num_rows,
        "interactions": interactions.num_rows,
    }


def _load(store: RunStore, entry: ManifestEntry) -> Prepared:
    items = ray.data.read_parquet(store.table_path(STAGE, "items"), filesystem=store.fs)
    interactions = ray.data.read_parquet(store.table_path(STAGE, "interactions"), filesystem=store.fs)
    return Prepared(entry, items, interactions)


def run(cfg: RunConfig, store: RunStore) -> Prepared:
    """Load, filter, split and commit; skipped when the same data and config were already committed."""
    inputs = {"raw": "synthetic" if cfg.data.loader == "synthetic" else fingerprint_paths(cfg.data.path, cfg.data.meta_path)}
    config_hash = cfg.section_hash("data")
    if store.is_fresh(STAGE, config_hash, inputs):
        entry = store.require(STAGE)
        print(f"prepare: up to date in {store.uri} (attempt {entry.attempt}); skipped", file=sys.stderr)
        return _load(store, entry)

    with store.stage(STAGE, config_hash, inputs) as attempt:
        raw = load_raw(cfg.data, cfg.seed)
        before = _counts(raw.interactions, raw.items)
        items = raw.items
        if raw.images:
            uris = []
            for item_id in items.column("item_id").to_pylist():
                image = raw.images.get(item_id)
                if image is not None:
                    attempt.write_bytes(f"images/{item_id}.png", image)
                uris.append(attempt.uri(f"images/{item_id}.png") if image is not None else None)
            items = items.set_column(items.schema.get_field_index("image_uri"), "image_uri", pa.array(uris, pa.string()))

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
            .materialize()
        )
        split.write_parquet(attempt.path("interactions"), filesystem=store.fs)
        attempt.write_table("items", items)
        for name, table in raw.extras.items():
            attempt.write_table(name, table)

        split_table = to_table(split)
        sizes = split_counts(split_table)
        report = {
            "run": store.uri,
            "loader": cfg.data.loader,
            "order": raw.order_source,
            "before_filter": before,
            "kcore": {"k": cfg.data.kcore, "passes": passes},
            "after_filter": _counts(interactions, items),
            "dropped_rows": raw.dropped,
            "split": {name: sizes.get(name, 0) for name in ("train", "valid", "test")},
            "evaluated_users": sizes.get("test", 0),
        }
        rows = {"items": items.num_rows, "interactions": split_table.num_rows}
        rows.update({name: table.num_rows for name, table in raw.extras.items()})
        entry = attempt.commit(rows, report)
    return _load(store, entry)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
