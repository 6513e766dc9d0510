"""Pure functions over interaction tables: k-core filtering and the leave-last-out split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepinterestgr.data.schema import SPLIT_FIELD

ORDER_COLUMN = "_order"


def kcore(interactions: pa.Table, k: int) -> tuple[pa.Table, int]:
    """Keep users and items with at least k interactions, repeated until nothing changes.

    Returns the filtered table and the number of passes it took.
    """
    if k <= 1:
        return interactions, 0
    passes = 0
    while True:
        passes += 1
        keep = None
        for column in ("user_id", "item_id"):
            counts = interactions.group_by(column).aggregate([(column, "count")])
            enough = counts.filter(pc.greater_equal(counts[f"{column}_count"], k)).column(column)
            mask = pc.is_in(interactions.column(column), value_set=enough)
            keep = mask if keep is None else pc.and_(keep, mask)
        kept = interactions.filter(keep)
        if kept.num_rows == interactions.num_rows:
            return kept, passes
        interactions = kept


def keep_members(interactions: pa.Table, keep: dict[str, pa.Array]) -> pa.Table:
    """Rows whose value of every column in `keep` is among that column's kept values."""
    mask = None
    for column, values in keep.items():
        member = pc.is_in(interactions.column(column), value_set=values)
        mask = member if mask is None else pc.and_(mask, member)
    return interactions if mask is None else interactions.filter(mask)


def leave_last_out(interactions: pa.Table, tiebreak: str = ORDER_COLUMN) -> pa.Table:
    """Add a `split` column: per user, last -> test, penultimate -> valid, the rest -> train.

    Order is (timestamp, then the `tiebreak` column if present). Users with fewer than three
    interactions keep everything in train: they still teach the model but have no held-out target.
    Works on any subset of whole users, so Ray Data can run it per group.
    """
    keys = [("user_id", "ascending"), ("timestamp", "ascending")]
    if tiebreak in interactions.column_names:
        keys.append((tiebreak, "ascending"))
    table = interactions.sort_by(keys)
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    n = len(users)
    split = np.full(n, "train", dtype=object)
    if n:
        last_of_user = np.ones(n, dtype=bool)
        last_of_user[:-1] = users[1:] != users[:-1]
        starts = np.r_[0, np.flatnonzero(last_of_user[:-1]) + 1]
        ends = np.flatnonzero(last_of_user)
        lengths = ends - starts + 1
        eligible = lengths >= 3
        split[ends[eligible]] = "test"
        split[ends[eligible] - 1] = "valid"
    return table.append_column(SPLIT_FIELD, pa.array(split, type=pa.string()))


def partition_by_user(interactions: pa.Table, max_rows: int) -> list[pa.Table]:
    """Cut the table into blocks of about `max_rows` rows that never split a user.

    Whole users per block let Ray Data run `leave_last_out` block by block, with no shuffle.
    """
    table = interactions.sort_by([("user_id", "ascending")])
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    boundaries = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1, len(users)]
    blocks, start = [], 0
    for boundary in boundaries[1:]:
        if boundary - start >= max_rows or boundary == len(users):
            blocks.append(table.slice(start, boundary - start))
            start = boundary
    return blocks
