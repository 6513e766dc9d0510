"""Amazon Reviews 2014 and 2018: a reviews file (`*_5.json[.gz]`) and a meta file (`meta_*.json[.gz]`).

2014 meta lines are Python literals; 2018 meta lines are JSON. 2014 has `categories` (a list of
paths), `description` (a string) and `imUrl`; 2018 has `category` (one path), `description` (a list)
and `imageURLHighRes`/`imageURL` lists. Both reviews formats carry reviewerID, asin, unixReviewTime.
"""

from __future__ import annotations

from deepinterestgr.config import DataConfig
from deepinterestgr.data.lines import read_records, require
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import drop_unknown_items, interactions_table, items_table
from deepinterestgr.data.text import clean_text
from deepinterestgr.errors import DataError


def _categories(record: dict) -> list[str]:
    if record.get("categories"):
        paths = record["categories"]
        leaf_first = [c for path in paths for c in (path if isinstance(path, list) else [path])]
    else:
        leaf_first = list(record.get("category") or [])
    seen: dict[str, None] = {}
    for category in leaf_first:
        text = clean_text(category)
        if text:
            seen.setdefault(text, None)
    return list(seen)


def _image(record: dict) -> str | None:
    if record.get("imUrl"):
        return str(record["imUrl"])
    for key in ("imageURLHighRes", "imageURL"):
        urls = record.get(key) or []
        if urls:
            return str(urls[0])
    return None


def load_amazon(cfg: DataConfig) -> RawData:
    """Load an Amazon Reviews category: interactions from the reviews, the catalog from the meta file."""
    if not cfg.path or not cfg.meta_path:
        raise DataError("data.path and data.meta_path: the amazon loader needs the reviews file and the meta file")
    dropped: dict[str, int] = {}
    items = []
    for number, record in read_records(
        cfg.meta_path, allow_python_literals=True, drop_bad=cfg.drop_bad_rows, dropped=dropped
    ):
        items.append(
            {
                "item_id": str(require(record, "asin", cfg.meta_path, number)),
                "title": clean_text(record.get("title")),
                "description": clean_text(record.get("description")),
                "brand": clean_text(record.get("brand")),
                "categories": _categories(record),
                "image_uri": _image(record),
            }
        )
    users: list[str] = []
    item_ids: list[str] = []
    times: list[int] = []
    for number, record in read_records(cfg.path, drop_bad=cfg.drop_bad_rows, dropped=dropped):
        users.append(str(require(record, "reviewerID", cfg.path, number)))
        item_ids.append(str(require(record, "asin", cfg.path, number)))
        try:
            times.append(int(require(record, "unixReviewTime", cfg.path, number)))
        except (TypeError, ValueError):
            raise DataError(f"{cfg.path}:{number}: field 'unixReviewTime' is not an integer") from None
    items_tbl = items_table(items, str(cfg.meta_path))
    interactions = drop_unknown_items(
        interactions_table(users, item_ids, times), items_tbl, str(cfg.path), cfg.drop_bad_rows, dropped
    )
    return RawData(items=items_tbl, interactions=interactions, dropped=dropped, order_source="timestamp")
