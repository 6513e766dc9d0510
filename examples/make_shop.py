"""Writes examples/shop/: a small shop catalog in the jsonl layout (items.jsonl, sequences.jsonl).

    python examples/make_shop.py [--items 200] [--users 400] [--seed 7] [--out examples/shop]

The products come from the seeded synthetic generator with `interest_text: indirect`: titles and
descriptions read like a shop's and only imply what each item is for, so mining has something to
infer. The files are committed; rerun this to make a catalog of another size.
"""

import argparse
import json
import os
from pathlib import Path

from deepinterestgr.config import load_config
from deepinterestgr.data.registry import load_raw

ITEM_FIELDS = ("item_id", "title", "description", "brand", "categories")


def _write(path: Path, rows: list[dict]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(partial, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "shop"))
    args = parser.parse_args()
    cfg = load_config(None, [f"data.synthetic.num_items={args.items}", f"data.synthetic.num_users={args.users}",
                             "data.synthetic.interest_text=indirect", "data.synthetic.images=false"])
    raw = load_raw(cfg.data, args.seed)
    items = [{k: row[k] for k in ITEM_FIELDS} for row in raw.items.to_pylist()]
    sequences: dict[str, list[tuple[int, str]]] = {}
    for row in raw.interactions.to_pylist():
        sequences.setdefault(row["user_id"], []).append((row["timestamp"], row["item_id"]))
    users = [{"user_id": user, "item_ids": [item for _, item in sorted(events)]} for user, events in sorted(sequences.items())]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "items.jsonl", items)
    _write(out / "sequences.jsonl", users)
    print(f"{out}: {len(items)} items, {len(users)} users, {sum(len(u['item_ids']) for u in users)} interactions")


if __name__ == "__main__":
    main()
