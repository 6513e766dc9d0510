"""Building the standard tables from loader rows, and the checks every loader shares."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from deepinterestgr.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from deepinterestgr.errors import DataError


def items_table(rows: Sequence[dict], source: str) -> pa.Table:
    """Items from dicts; duplicate or empty item ids are errors naming the source."""
    table = pa.Table.from_pylist(
        [
            {
                "item_id": str(row["item_id"]),
                "title": row.get("title") or "",
                "description": row.get("description") or "",
                "brand": row.get("brand") or "",
                "categories": list(row.get("categories") or []),
                "image_uri": row.get("image_uri"),
            }
            for row in rows
        ],
        schema=ITEMS_SCHEMA,
    )
    check_item_ids(table, source)
    return table


def check_item_ids(table: pa.Table, source: str) -> None:
    """Item ids must be non-empty and unique: errors name the source and examples."""
    ids = table.column("item_id")
    empty = pc.sum(pc.equal(pc.utf8_length(ids), 0)).as_py() or 0
    if empty:
        raise DataError(f"{source}: {empty} item(s) have an empty item_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids)
        dupes = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:5]
        raise DataError(f"{source}: duplicate item_id(s), e.g. {dupes}")


def interactions_table(users: list[str], items: list[str], timestamps: list[int]) -> pa.Table:
    return pa.table(
        {"user_id": users, "item_id": items, "timestamp": timestamps}, schema=INTERACTIONS_SCHEMA
    )


def drop_unknown_items(
    interactions: pa.Table, items: pa.Table, source: str, drop_bad: bool, dropped: dict[str, int]
) -> pa.Table:
    """Interactions must name catalog items: raise naming examples, or drop and count them."""
    known = pc.is_in(interactions.column("item_id"), value_set=items.column("item_id"))
    unknown = interactions.num_rows - (pc.sum(known).as_py() or 0)
    if not unknown:
        return interactions
    if not drop_bad:
        examples = pc.unique(interactions.filter(pc.invert(known)).column("item_id")).to_pylist()[:5]
        raise DataError(
            f"{source}: {unknown} interaction(s) name item ids missing from the catalog, e.g. {examples} "
            "(set data.drop_bad_rows=true to drop them)"
        )
    dropped["unknown_item_interactions"] = dropped.get("unknown_item_interactions", 0) + unknown
    return interactions.filter(known)
