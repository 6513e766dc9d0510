"""Amazon Reviews 2014 and 2018: a reviews file (`*_5.json[.gz]`) and a meta file (`meta_*.json[.gz]`).

2014 meta lines are Python literals; 2018 meta lines are JSON. 2014 has `categories` (a list of
paths), `description` (a string) and `imUrl`; 2018 has `category` (one path), `description` (a list)
and `imageURLHighRes`/`imageURL` lists. Both reviews formats carry reviewerID, asin, unixReviewTime.
"""

from __future__ import annotations

from deepinterestgr.config import DataConfig
from deepinterestgr.data.lines import converted_records, identifier, optional_string, require, string_list, timestamp
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import drop_unknown_items, interactions_table, items_table
from deepinterestgr.data.text import clean_text, text_fields
from deepinterestgr.errors import DataError


def _categories(record: dict, where: str) -> list[str]:
    field = "categories" if record.get("categories") else "category"
    seen: dict[str, None] = {}
    for category in string_list(record.get(field), field, where):
        text = clean_text(category)
        if text:
            seen.setdefault(text, None)
    return list(seen)


def _image(record: dict, where: str) -> str | None:
    if record.get("imUrl"):
        return optional_string(record["imUrl"], "imUrl", where)
    for key in ("imageURLHighRes", "imageURL"):
        urls = string_list(record.get(key), key, where)
        if urls:
            return urls[0]
    return None


def _item(record: dict, where: str) -> dict:
    return {
        "item_id": identifier(require(record, "asin", where), "asin", where),
        **text_fields(record),
        "categories": _categories(record, where),
        "image_uri": _image(record, where),
    }


def _review(record: dict, where: str) -> tuple[str, str, int]:
    return (
        identifier(require(record, "reviewerID", where), "reviewerID", where),
        identifier(require(record, "asin", where), "asin", where),
        timestamp(require(record, "unixReviewTime", where), "unixReviewTime", where),
    )


def load_amazon(cfg: DataConfig) -> RawData:
    """Load an Amazon Reviews category: interactions from the reviews, the catalog from the meta file."""
    if not cfg.path or not cfg.meta_path:
        raise DataError("data.path and data.meta_path: the amazon loader needs the reviews file and the meta file")
    dropped: dict[str, int] = {}
    items = list(converted_records(cfg.meta_path, _item, allow_python_literals=True, drop_bad=cfg.drop_bad_rows, dropped=dropped))
    reviews = list(converted_records(cfg.path, _review, drop_bad=cfg.drop_bad_rows, dropped=dropped))
    users, item_ids, times = (list(column) for column in zip(*reviews)) if reviews else ([], [], [])
    items_tbl = items_table(items, str(cfg.meta_path))
    interactions = drop_unknown_items(
        interactions_table(users, item_ids, times), items_tbl, str(cfg.path), cfg.drop_bad_rows, dropped
    )
    return RawData(items=items_tbl, interactions=interactions, dropped=dropped, order_source="timestamp")
