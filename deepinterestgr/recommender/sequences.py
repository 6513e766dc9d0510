"""Users' item sequences in SID tokens: training sequences, prompts and held-out targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from deepinterestgr.recommender.model import BOS
from deepinterestgr.recommender.vocab import SIDVocab


@dataclass
class UserSequences:
    """Per user (sorted by id): training item rows (oldest first) and the valid/test target rows (-1 = none)."""

    user_ids: list[str]
    train: list[list[int]]
    valid: np.ndarray
    test: np.ndarray
    unknown_items: int = 0


def build_sequences(interactions: pa.Table, item_rows: dict[str, int]) -> UserSequences:
    """Group split interactions by user in time order; items without a SID are skipped and counted."""
    table = interactions.sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    users, items, splits = (table.column(c).to_pylist() for c in ("user_id", "item_id", "split"))
    order: dict[str, int] = {}
    train: list[list[int]] = []
    valid, test, unknown = [], [], 0
    for user, item, split in zip(users, items, splits):
        if user not in order:
            order[user] = len(train)
            train.append([])
            valid.append(-1)
            test.append(-1)
        row = item_rows.get(item)
        if row is None:
            unknown += 1
            continue
        index = order[user]
        if split == "train":
            train[index].append(row)
        elif split == "valid":
            valid[index] = row
        else:
            test[index] = row
    return UserSequences(list(order), train, np.array(valid), np.array(test), unknown)


def tokens(rows: list[int], codes: np.ndarray, vocab: SIDVocab, max_items: int, item_tokens: bool = False) -> list[int]:
    """BOS followed by the SID tokens of the last `max_items` items (each then followed by its item token
    `vocab.size + row` with `item_tokens`)."""
    recent = rows[-max_items:] if max_items else rows
    if not recent:
        return [BOS]
    sids = vocab.encode(codes[recent])
    if item_tokens:
        sids = np.concatenate([sids, vocab.size + np.asarray(recent, dtype=np.int64)[:, None]], axis=1)
    return [BOS] + sids.reshape(-1).tolist()


def most_popular(sequences: UserSequences, num_items: int) -> np.ndarray:
    """Item rows ordered by training frequency (ties by row): the popularity baseline's ranking."""
    counts = np.bincount([row for rows in sequences.train for row in rows], minlength=num_items)
    return np.lexsort((np.arange(num_items), -counts))


def validation_users(sequences: UserSequences, limit: int, seed: int) -> list[int]:
    """Users with a validation target; a seeded sample of `limit` of them when there are more (0 = all)."""
    users = [u for u in range(len(sequences.user_ids)) if sequences.valid[u] >= 0]
    if limit and len(users) > limit:
        users = sorted(np.random.default_rng(seed).choice(users, size=limit, replace=False).tolist())
    return users
