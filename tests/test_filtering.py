import pyarrow as pa

from deepinterestgr.data.filtering import ORDER_COLUMN, kcore, leave_last_out, partition_by_user
from deepinterestgr.data.tables import interactions_table


def _table(rows):
    users, items, times = zip(*rows)
    return interactions_table(list(users), list(items), list(times))


def test_kcore_iterates_to_a_fixed_point():
    # u3's only interaction is with x; dropping u3 leaves x with one interaction, so a second pass drops x.
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "x", 3), ("u2", "a", 1), ("u2", "b", 2), ("u3", "x", 1)]
    kept, passes = kcore(_table(rows), 2)
    assert sorted(zip(kept["user_id"].to_pylist(), kept["item_id"].to_pylist())) == [
        ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert passes == 3
    assert kcore(_table(rows), 0)[0].num_rows == len(rows)


def test_leave_last_out_by_time_with_ties_broken_by_order():
    rows = [("u", "c", 3), ("u", "a", 1), ("u", "b", 2), ("u", "d", 3), ("v", "p", 1), ("v", "q", 2)]
    table = _table(rows).append_column(ORDER_COLUMN, pa.array(range(len(rows))))
    out = leave_last_out(table)
    by_user = {}
    for row in out.to_pylist():
        by_user.setdefault(row["user_id"], []).append((row["item_id"], row["split"]))
    assert by_user["u"] == [("a", "train"), ("b", "train"), ("c", "valid"), ("d", "test")]
    assert by_user["v"] == [("p", "train"), ("q", "train")]  # too short to hold out


def test_partition_by_user_keeps_users_whole():
    rows = [(f"u{i % 7}", f"i{i}", i) for i in range(100)]
    blocks = partition_by_user(_table(rows), max_rows=10)
    assert sum(b.num_rows for b in blocks) == 100 and len(blocks) > 1
    owners = [set(b["user_id"].to_pylist()) for b in blocks]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])
