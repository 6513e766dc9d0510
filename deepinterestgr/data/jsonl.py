"""The jsonl layout: `items.jsonl` (one item a line) and `sequences.jsonl` (user_id, item_ids oldest first)."""

from __future__ import annotations

from pathlib import Path

from deepinterestgr.config import DataConfig
from deepinterestgr.data.lines import read_records, require
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import drop_unknown_items, interactions_table, items_table
from deepinterestgr.data.text import clean_text
from deepinterestgr.errors import DataError


def load_jsonl(cfg: DataConfig) -> RawData:
    """Load `items.jsonl` + `sequences.jsonl`; order within a sequence becomes the timestamp."""
    if not cfg.path:
        raise DataError("data.path: the jsonl loader needs the folder holding items.jsonl and sequences.jsonl")
    folder = Path(cfg.path)
    items_path, sequences_path = folder / "items.jsonl", folder / "sequences.jsonl"
    dropped: dict[str, int] = {}
    items = []
    for number, record in read_records(items_path, drop_bad=cfg.drop_bad_rows, dropped=dropped):
        categories = record.get("categories") or []
        if isinstance(categories, str):
            categories = [categories]
        items.append(
            {
                "item_id": str(require(record, "item_id", items_path, number)),
                "title": clean_text(record.get("title")),
                "description": clean_text(record.get("description")),
                "brand": clean_text(record.get("brand")),
                "categories": [clean_text(c) for c in categories],
                "image_uri": record.get("image_uri"),
            }
        )
    users: list[str] = []
    item_ids: list[str] = []
    positions: list[int] = []
    for number, record in read_records(sequences_path, drop_bad=cfg.drop_bad_rows, dropped=dropped):
        user = str(require(record, "user_id", sequences_path, number))
        sequence = require(record, "item_ids", sequences_path, number)
        if not isinstance(sequence, list):
            raise DataError(f"{sequences_path}:{number}: field 'item_ids' must be a list")
        for position, item in enumerate(sequence):
            users.append(user)
            item_ids.append(str(item))
            positions.append(position)
    items_tbl = items_table(items, str(items_path))
    interactions = drop_unknown_items(
        interactions_table(users, item_ids, positions), items_tbl, str(sequences_path), cfg.drop_bad_rows, dropped
    )
    return RawData(items=items_tbl, interactions=interactions, dropped=dropped, order_source="position")
