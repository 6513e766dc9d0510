"""The jsonl layout: `items.jsonl` (one item a line) and `sequences.jsonl` (user_id, item_ids oldest first)."""

from __future__ import annotations

from pathlib import Path

from deepinterestgr.config import DataConfig
from deepinterestgr.data.lines import converted_records, identifier, optional_string, require, string_list
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import drop_unknown_items, interactions_table, items_table
from deepinterestgr.data.text import clean_text, text_fields
from deepinterestgr.errors import DataError


def _item(record: dict, where: str) -> dict:
    return {
        "item_id": identifier(require(record, "item_id", where), "item_id", where),
        **text_fields(record),
        "categories": [clean_text(c) for c in string_list(record.get("categories"), "categories", where)],
        "image_uri": optional_string(record.get("image_uri"), "image_uri", where),
    }


def _sequence(record: dict, where: str) -> tuple[str, list[str]]:
    user = identifier(require(record, "user_id", where), "user_id", where)
    sequence = require(record, "item_ids", where)
    if not isinstance(sequence, list):
        raise DataError(f"{where}: field 'item_ids' must be a list")
    return user, [identifier(item, "item_ids", where) for item in sequence]


def load_jsonl(cfg: DataConfig) -> RawData:
    """Load `items.jsonl` + `sequences.jsonl`; order within a sequence becomes the timestamp."""
    if not cfg.path:
        raise DataError("data.path: the jsonl loader needs the folder holding items.jsonl and sequences.jsonl")
    folder = Path(cfg.path)
    items_path, sequences_path = folder / "items.jsonl", folder / "sequences.jsonl"
    dropped: dict[str, int] = {}
    items = list(converted_records(items_path, _item, drop_bad=cfg.drop_bad_rows, dropped=dropped))
    users: list[str] = []
    item_ids: list[str] = []
    positions: list[int] = []
    for user, sequence in converted_records(sequences_path, _sequence, drop_bad=cfg.drop_bad_rows, dropped=dropped):
        users.extend([user] * len(sequence))
        item_ids.extend(sequence)
        positions.extend(range(len(sequence)))
    items_tbl = items_table(items, str(items_path))
    interactions = drop_unknown_items(
        interactions_table(users, item_ids, positions), items_tbl, str(sequences_path), cfg.drop_bad_rows, dropped
    )
    return RawData(items=items_tbl, interactions=interactions, dropped=dropped, order_source="position")
