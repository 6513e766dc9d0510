"""Users' item sequences in SID tokens: training sequences, prompts and held-out targets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepinterestgr.recommender.model import BOS
from deepinterestgr.recommender.vocab import SIDVocab


class RaggedRows(Sequence[list[int]]):
    """Per-user item rows in one flat int32 array cut by offsets (CSR): 4 bytes per interaction, where
    a list of lists of Python ints costs ~36. Indexing gives a list, so `rows + [target]` still appends."""

    def __init__(self, offsets: np.ndarray, values: np.ndarray):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.int32)

    @classmethod
    def from_lists(cls, rows: Iterable[Iterable[int]]) -> RaggedRows:
        """The ragged form of a list of per-user row lists."""
        rows = [list(r) for r in rows]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows], dtype=np.int64)])
        return cls(offsets, np.fromiter((x for r in rows for x in r), dtype=np.int32, count=int(offsets[-1])))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, user: int) -> list[int]:
        if not -len(self) <= user < len(self):
            raise IndexError(user)
        user %= len(self)
        return self.values[self.offsets[user]: self.offsets[user + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[u] for u in range(len(self)))


@dataclass
class UserSequences:
    """Per user (sorted by id): training item rows (oldest first) and the valid/test target rows (-1 = none)."""

    user_ids: list[str]
    train: RaggedRows
    valid: np.ndarray
    test: np.ndarray
    unknown_items: int = 0


def build_sequences(interactions: pa.Table, item_ids: list[str]) -> UserSequences:
    """Group split interactions by user in time order, as rows of `item_ids`; items not in it (no SID)
    are skipped and counted.

    Integer operations only (user ids encoded once, one stable sort of (user, time) pairs), so time and
    memory grow about linearly with the interactions; a user's valid/test target is their last valid/test
    interaction."""
    encoded = interactions.column("user_id").combine_chunks().dictionary_encode()
    names = encoded.dictionary.to_numpy(zero_copy_only=False)
    by_name = np.argsort(names, kind="stable")
    count = len(names)
    rank = np.empty(count, dtype=np.int64)
    rank[by_name] = np.arange(count)
    user_index = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    order = np.lexsort((interactions.column("timestamp").to_numpy(), user_index))
    user_index = user_index[order]
    found = pc.index_in(interactions.column("item_id"), value_set=pa.array(item_ids, type=pa.string()))
    known = pc.is_valid(found).to_numpy(zero_copy_only=False)
    rows = np.full(interactions.num_rows, -1, dtype=np.int64)
    rows[known] = pc.drop_null(found).to_numpy()
    rows, known = rows[order], known[order]
    split = interactions.column("split")
    train = known & pc.equal(split, "train").to_numpy(zero_copy_only=False)[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_index[train], minlength=count))])
    targets = []
    for name in ("valid", "test"):
        chosen = known & pc.equal(split, name).to_numpy(zero_copy_only=False)[order]
        last = np.full(count, -1, dtype=np.int64)
        np.maximum.at(last, user_index[chosen], np.flatnonzero(chosen))
        targets.append(np.where(last >= 0, rows[np.maximum(last, 0)], -1))
    return UserSequences(names[by_name].tolist(), RaggedRows(offsets, rows[train]), targets[0], targets[1],
                         int((~known).sum()))


def split_histories(sequences: UserSequences, split: str) -> tuple[list[int], list[list[int]], np.ndarray]:
    """(users, histories, targets) of the users with a target in `split`: "valid" ranks the validation item
    after the training items, "test" the test item after the training and validation items."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    targets = sequences.test if split == "test" else sequences.valid
    users = [u for u in range(len(sequences.user_ids)) if targets[u] >= 0]
    histories = [sequences.train[u] + ([int(sequences.valid[u])] if split == "test" and sequences.valid[u] >= 0 else [])
                 for u in users]
    return users, histories, np.asarray(targets[users], dtype=np.int64)


def window_spans(length: int, size: int) -> list[tuple[int, int]]:
    """(start, end) slices that cut a sequence of `length` items into windows of at most `size` items,
    oldest first: the last ends at the last item, consecutive windows share one item (the context of the
    next window's first target), so every item after the first is a next-item target exactly once."""
    return [(max(0, end - size), end) for end in range(length, 1, -(size - 1))][::-1]


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


def training_counts(sequences: UserSequences, num_items: int) -> np.ndarray:
    """How often each item row occurs in the training split."""
    return np.bincount(sequences.train.values, minlength=num_items)


def most_popular(sequences: UserSequences, num_items: int) -> np.ndarray:
    """Item rows ordered by training frequency (ties by row): the popularity baseline's ranking."""
    counts = training_counts(sequences, num_items)
    return np.lexsort((np.arange(num_items), -counts))


def validation_users(sequences: UserSequences, limit: int, seed: int) -> list[int]:
    """Users with a validation target; a seeded sample of `limit` of them when there are more (0 = all)."""
    users = [u for u in range(len(sequences.user_ids)) if sequences.valid[u] >= 0]
    if limit and len(users) > limit:
        users = sorted(np.random.default_rng(seed).choice(users, size=limit, replace=False).tolist())
    return users
