"""The Arrow schemas every loader produces, and the records loaders hand back."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from deepinterestgr.errors import DataError

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("image_uri", pa.string()),
    ]
)

# `timestamp` is a Unix time where the source has one, else the position in the user's sequence.
INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)

SPLIT_FIELD = pa.field("split", pa.string(), nullable=False)
SPLIT_INTERACTIONS_SCHEMA = INTERACTIONS_SCHEMA.append(SPLIT_FIELD)


@dataclass
class RawData:
    """What a loader returns: the two tables, optional side tables, and item images to store."""

    items: pa.Table
    interactions: pa.Table
    # Side tables such as the synthetic generator's ground-truth interests.
    extras: dict[str, pa.Table] = field(default_factory=dict)
    # item_id -> encoded image bytes (PNG) that the prepare stage writes into the run storage.
    images: dict[str, bytes] = field(default_factory=dict)
    # Rows dropped while loading, by reason (only when the config allows dropping).
    dropped: dict[str, int] = field(default_factory=dict)
    order_source: str = "timestamp"


def conform(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """Select and cast `table` to `schema`, naming the missing column and the source on failure."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {table.column_names}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{source}: columns do not match the expected types: {exc}") from exc
