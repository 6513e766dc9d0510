"""What the recommender stages feed their models, built from a run's committed artifacts: the SFT examples
and validation prompts (`sft_inputs`), a split's prompts and targets (`split_rows`), the items' content
vectors. The sft and evaluate stages and the benchmarks all build them here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import Catalog, item_texts, load_catalog, user_interests
from deepinterestgr.recommender.formats import Example, RecommenderMeta
from deepinterestgr.recommender.model import content_rows
from deepinterestgr.recommender.sequences import split_histories, validation_users
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.tokenizer.embeddings import stack_embeddings


@dataclass
class SFTInputs:
    """What SFT trains and validates on, built from a run's prepare and tokenize stages (and mine, label)."""

    catalog: Catalog
    meta: RecommenderMeta
    tokenizer: object | None
    fmt: object  # the backbone's prompt format (Backbone.format)
    grouped: list[tuple[int, Example]]  # (group, example): a user's examples share their group
    user_examples: int
    interests: dict[str, str]
    valid_users: list[int]
    valid_prompts: list[list[int]]
    valid_targets: list[int]
    item_rows: np.ndarray | None  # the item tokens' start (sft.item_token_init=content), else None

    def rows(self) -> list[dict]:
        """The examples as dataset rows (`key` keeps their order across shards)."""
        return [{"key": k, "group": g, "ids": e.ids, "loss_start": e.loss_start, "read_only_from": e.read_only_from}
                for k, (g, e) in enumerate(self.grouped)]


def sft_inputs(cfg: RunConfig, store: RunStore) -> SFTInputs:
    """The SFT examples and validation users of a run, as the sft stage trains on them."""
    s = cfg.sft
    catalog = load_catalog(store)
    seqs = catalog.sequences
    backbone = backbones.get(s.backbone)
    meta, tokenizer = backbone.meta(s, catalog.trie.sizes, len(catalog.codes))
    fmt = backbone.format(meta, catalog.codes, tokenizer)
    interests = user_interests(store)
    # Each example's group is its user (item-alignment examples get a group each), for targets_per_user.
    grouped = [(u, e) for u, rows in enumerate(seqs.train) for e in fmt.user_examples(rows, interests.get(seqs.user_ids[u]))]
    user_examples = len(grouped)
    if backbone.item_tasks(s):
        grouped += [(-1 - k, e) for k, e in enumerate(fmt.item_examples(item_texts(store, catalog.item_ids)))]
    if not grouped:
        raise DataError("sft: no user has two training interactions, so there is nothing to learn from")
    valid = validation_users(seqs, s.valid_users, cfg.seed)
    # The config refuses item_token_init=content without item tokens.
    item_rows = content_rows(item_content_vectors(store, catalog.item_ids), s.hidden_size) if s.item_token_init == "content" else None
    return SFTInputs(catalog, meta, tokenizer, fmt, grouped, user_examples, interests, valid,
                     [fmt.prompt(seqs.train[u], interests.get(seqs.user_ids[u])) for u in valid],
                     [int(seqs.valid[u]) for u in valid], item_rows)


def item_content_vectors(store: RunStore, item_ids: list[str]) -> np.ndarray:
    """The vectors tokenize embedded per item (content channels, then the image's when present), in catalog order."""
    table = store.read_table("tokenize", "embeddings")
    ids, content, image = stack_embeddings([{c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}])
    if ids != list(item_ids):
        raise DataError("sft: tokenize's embeddings table does not hold the catalog's items; rerun `dig tokenize`")
    return (content if image is None else torch.cat([content, image], dim=1)).numpy()


def split_rows(catalog: Catalog, fmt, interests: dict[str, str], split: str = "test") -> list[dict]:
    """One row per user with a target in `split` (`split_histories`): the prompt from the items before it,
    the history, and the target."""
    seqs = catalog.sequences
    users, histories, targets = split_histories(seqs, split)
    return [{"user": u, "prompt": fmt.prompt(h, interests.get(seqs.user_ids[u])), "history": h, "target": int(t)}
            for u, h, t in zip(users, histories, targets)]
