"""Large inputs through Ray Data (`data.loader: parquet`): interactions read in blocks, k-core and the
leave-last-out split run as Ray Data operations, so the driver never holds the interactions.

What reaches the driver is the catalog (items), the ids that pass each k-core pass (users and items,
not their interactions) and counts. Interactions with equal timestamps are ordered by item id, which
does not depend on how the files were cut into blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pyarrow import fs as pafs

from deepinterestgr.config import RunConfig
from deepinterestgr.data.filtering import keep_members, leave_last_out
from deepinterestgr.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from deepinterestgr.data.tables import check_item_ids
from deepinterestgr.errors import DataError
from deepinterestgr.storage.filesystem import resolve
from ray_jobs.common import to_table


def locate(cfg: RunConfig, name: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of `<data.path>/<name>.parquet` or of the folder `<data.path>/<name>/`."""
    uri = cfg.data.path
    if not uri:
        raise DataError("data.path: the parquet loader needs the folder holding items and interactions (.parquet or folders)")
    if urlparse(uri).scheme == "s3":
        filesystem, root, _ = resolve(uri, cfg.storage)
    else:
        filesystem, root = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    for candidate in (f"{root}/{name}.parquet", f"{root}/{name}"):
        if filesystem.get_file_info(candidate).type != pafs.FileType.NotFound:
            return filesystem, candidate
    raise DataError(f"data.path {uri}: neither {name}.parquet nor a folder {name}/ is there")


def _check_columns(schema: pa.Schema, required: dict[str, tuple], source: str) -> None:
    for column, kinds in required.items():
        if column not in schema.names:
            raise DataError(f"{source}: missing column {column!r}; found {schema.names}")
        kind = schema.field(column).type
        if not any(test(kind) for test in kinds):
            raise DataError(f"{source}: column {column!r} has type {kind}, expected {' or '.join(t.__name__.removeprefix('is_') for t in kinds)}")


ID_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)


def _standard(batch: pa.Table) -> pa.Table:
    return batch.select(INTERACTIONS_SCHEMA.names).cast(INTERACTIONS_SCHEMA)


def read_interactions(cfg: RunConfig) -> ray.data.Dataset:
    """The interactions as a Ray Dataset in the standard schema (ids as strings, int64 timestamps)."""
    filesystem, path = locate(cfg, "interactions")
    data = ray.data.read_parquet(path, filesystem=filesystem)
    _check_columns(data.schema().base_schema, {"user_id": ID_TYPES, "item_id": ID_TYPES, "timestamp": (pa.types.is_integer,)}, path)
    return data.map_batches(_standard, batch_format="pyarrow")


def read_items(cfg: RunConfig) -> pa.Table:
    """The catalog, gathered in the driver: the optional text columns are empty where the files lack them."""
    filesystem, path = locate(cfg, "items")
    table = to_table(ray.data.read_parquet(path, filesystem=filesystem))
    _check_columns(table.schema, {"item_id": ID_TYPES}, path)
    for field in ITEMS_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    try:
        table = table.select(ITEMS_SCHEMA.names).cast(ITEMS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: item columns do not match the expected types: {exc}") from None
    for column in ("title", "description", "brand"):
        table = table.set_column(table.schema.get_field_index(column), column, pc.fill_null(table[column], ""))
    check_item_ids(table, path)
    return table


def _frequent(data: ray.data.Dataset, column: str, k: int, partitions: int) -> tuple[pa.Array, int]:
    """The values of a column with at least k interactions, and how many distinct values it holds
    (hash-shuffled on the cluster; one row per value reaches the driver)."""
    table = to_table(data.groupby(column, num_partitions=partitions).count())
    if not table.num_rows:
        return pa.array([], pa.string()), 0
    return table.filter(pc.greater_equal(table["count()"], k)).column(column).combine_chunks(), table.num_rows


def _unknown(batch: pa.Table, known: pa.Array) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch["item_id"], value_set=known)))


def known_items(data: ray.data.Dataset, items: pa.Table, drop_bad: bool, dropped: dict[str, int], source: str) -> ray.data.Dataset:
    """Interactions must name catalog items: raise naming examples, or drop and count them."""
    total, known = data.count(), items.column("item_id").combine_chunks()
    kept = data.map_batches(keep_members, fn_kwargs={"keep": {"item_id": known}}, batch_format="pyarrow").materialize()
    unknown = total - kept.count()
    if not unknown:
        return kept
    if not drop_bad:
        examples = sorted({row["item_id"] for row in data.map_batches(_unknown, fn_kwargs={"known": known}, batch_format="pyarrow").take(50)})
        raise DataError(f"{source}: {unknown} interaction(s) name item ids missing from the catalog, e.g. "
                        f"{examples[:5]} (set data.drop_bad_rows=true to drop them)")
    dropped["unknown_item_interactions"] = dropped.get("unknown_item_interactions", 0) + unknown
    return kept


@dataclass
class KCore:
    """The k-core's result: the kept interactions, the passes it took, the distinct users before it
    and the users and items left after it (each counted by the passes themselves, no extra shuffle)."""

    data: ray.data.Dataset
    passes: int
    users_before: int
    users_after: int
    # The items left (None when k <= 1: every item is kept).
    items: pa.Array | None


def kcore(data: ray.data.Dataset, k: int, partitions: int) -> KCore:
    """Keep users and items with at least k interactions, repeated until nothing changes (as
    `deepinterestgr.data.filtering.kcore`, pass for pass); k <= 1 keeps everything."""
    if k <= 1:
        users = _frequent(data, "user_id", 1, partitions)[1]
        return KCore(data, 0, users, users, None)
    rows, passes, users_before = data.count(), 0, None
    while True:
        passes += 1
        (users, distinct_users), (items, _) = (_frequent(data, column, k, partitions) for column in ("user_id", "item_id"))
        users_before = distinct_users if users_before is None else users_before
        data = data.map_batches(keep_members, fn_kwargs={"keep": {"user_id": users, "item_id": items}}, batch_format="pyarrow").materialize()
        kept = data.count()
        if kept == rows:
            return KCore(data, passes, users_before, len(users), items)
        rows = kept


def split(data: ray.data.Dataset, rows: int, block_rows: int) -> ray.data.Dataset:
    """Leave-last-out per user: hash-partitioned by user (each block then holds whole users), split per block."""
    blocks = max(1, math.ceil(rows / block_rows))
    return data.repartition(blocks, keys=["user_id"], sort=True).map_batches(
        leave_last_out, fn_kwargs={"tiebreak": "item_id"}, batch_size=None, batch_format="pyarrow")
