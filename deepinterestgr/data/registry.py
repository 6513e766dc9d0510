"""The one loader registry: `data.loader` in the config names an entry here.

These loaders return whole tables. `parquet` is not among them: its interactions never become one
table; the prepare stage reads them through Ray Data (`ray_jobs/parquet_input.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from deepinterestgr.config import DataConfig
from deepinterestgr.data.amazon import load_amazon
from deepinterestgr.data.jsonl import load_jsonl
from deepinterestgr.data.recbole import load_recbole
from deepinterestgr.data.schema import ITEMS_SCHEMA, INTERACTIONS_SCHEMA, RawData, conform
from deepinterestgr.data.synthetic import generate_synthetic
from deepinterestgr.errors import DataError

LOADERS: dict[str, Callable[[DataConfig, int], RawData]] = {
    "synthetic": generate_synthetic,
    "recbole": lambda cfg, seed: load_recbole(cfg),
    "jsonl": lambda cfg, seed: load_jsonl(cfg),
    "amazon": lambda cfg, seed: load_amazon(cfg),
}


def load_raw(cfg: DataConfig, seed: int) -> RawData:
    """Run the configured loader and check its output against the standard schemas."""
    if cfg.loader not in LOADERS:
        raise DataError(f"data.loader: unknown loader {cfg.loader!r}; choose one of {sorted(LOADERS)}")
    raw = LOADERS[cfg.loader](cfg, seed)
    raw.items = conform(raw.items, ITEMS_SCHEMA, f"{cfg.loader} items")
    raw.interactions = conform(raw.interactions, INTERACTIONS_SCHEMA, f"{cfg.loader} interactions")
    if raw.items.num_rows == 0:
        raise DataError(f"{cfg.loader} loader at {cfg.path}: the catalog is empty")
    if raw.interactions.num_rows == 0:
        raise DataError(f"{cfg.loader} loader at {cfg.path}: no interactions")
    return raw
