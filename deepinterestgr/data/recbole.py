"""RecBole atomic files: `<name>.inter` and `<name>.item`, tab-separated, `field:type` headers."""

from __future__ import annotations

from pathlib import Path

from deepinterestgr.config import DataConfig
from deepinterestgr.data.lines import read_lines, timestamp
from deepinterestgr.data.schema import RawData
from deepinterestgr.data.tables import drop_unknown_items, interactions_table, items_table
from deepinterestgr.data.text import clean_text
from deepinterestgr.errors import DataError

TITLE_FIELDS = ("title", "movie_title", "item_name", "name")
CATEGORY_FIELDS = ("categories", "class", "genre", "genres", "category")


def _read_atomic(path: Path, drop_bad: bool, dropped: dict[str, int]) -> tuple[dict[str, str], list[tuple[int, list[str]]]]:
    """Return ({field name: type}, [(line number, row)]) of an atomic file; rows of the wrong width raise or are dropped."""
    lines = read_lines(path, drop_bad=drop_bad, dropped=dropped)
    header = next((text for _, text in lines if text.strip()), None)
    if header is None:
        raise DataError(f"{path}: file is empty")
    fields: dict[str, str] = {}
    for column in header.split("\t"):
        name, _, kind = column.partition(":")
        if not kind:
            raise DataError(f"{path}:1: header column {column!r} is not of the form name:type")
        fields[name] = kind
    rows = []
    for number, text in lines:
        if not text.strip():
            continue
        row = text.split("\t")
        if len(row) != len(fields):
            if not drop_bad:
                raise DataError(f"{path}:{number}: expected {len(fields)} tab-separated fields, found {len(row)}")
            dropped["malformed_lines"] = dropped.get("malformed_lines", 0) + 1
            continue
        rows.append((number, row))
    return fields, rows


def _first_present(fields: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in fields), None)


def load_recbole(cfg: DataConfig) -> RawData:
    """Load a RecBole dataset folder; the folder name is the dataset name (ml-100k -> ml-100k.inter)."""
    if not cfg.path:
        raise DataError("data.path: the recbole loader needs the dataset folder")
    folder = Path(cfg.path)
    inter_path, item_path = folder / f"{folder.name}.inter", folder / f"{folder.name}.item"
    dropped: dict[str, int] = {}
    inter_fields, inter_rows = _read_atomic(inter_path, cfg.drop_bad_rows, dropped)
    for needed in ("user_id", "item_id"):
        if needed not in inter_fields:
            raise DataError(f"{inter_path}: missing column {needed!r}; found {list(inter_fields)}")
    names = list(inter_fields)
    u, i = names.index("user_id"), names.index("item_id")
    t = names.index("timestamp") if "timestamp" in inter_fields else None
    timestamps = [timestamp(row[t], "timestamp", f"{inter_path}:{number}") if t is not None else n for n, (number, row) in enumerate(inter_rows)]

    item_fields, item_rows = _read_atomic(item_path, cfg.drop_bad_rows, dropped)
    if "item_id" not in item_fields:
        raise DataError(f"{item_path}: missing column 'item_id'; found {list(item_fields)}")
    title_field = _first_present(item_fields, TITLE_FIELDS)
    category_field = _first_present(item_fields, CATEGORY_FIELDS)
    used = {"item_id", title_field, category_field, "brand", "description"}
    items = []
    for _, row in item_rows:
        record = dict(zip(item_fields, row))
        extra = [f"{name.replace('_', ' ')}: {record[name]}" for name in item_fields if name not in used and record[name]]
        description = clean_text(record.get("description", ""))
        items.append(
            {
                "item_id": record["item_id"],
                "title": clean_text(record.get(title_field, "")) if title_field else "",
                "description": ". ".join(part for part in [description, *extra] if part),
                "brand": clean_text(record.get("brand", "")),
                "categories": record[category_field].split() if category_field else [],
            }
        )
    items_tbl = items_table(items, str(item_path))
    interactions = interactions_table([r[u] for _, r in inter_rows], [r[i] for _, r in inter_rows], timestamps)
    interactions = drop_unknown_items(interactions, items_tbl, str(inter_path), cfg.drop_bad_rows, dropped)
    return RawData(
        items=items_tbl,
        interactions=interactions,
        dropped=dropped,
        order_source="timestamp" if t is not None else "position",
    )
