"""Item embedding tables (tokenize's `embeddings`, Ray Data batches) as matrices in item-id order."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def _matrix(column: np.ndarray) -> np.ndarray:
    """A [rows, dim] float32 array from a tensor column or from a column of per-row arrays."""
    return np.asarray(column if column.dtype != object else np.stack(column), dtype=np.float32)


def stack_embeddings(batches: Iterable[dict[str, np.ndarray]]) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """(item ids, content embeddings, image embeddings or None) sorted by item_id, from numpy batches.

    The content embedding is the text embedding, followed by the interest channel and the collaborative
    vector when tokenize added them.
    """
    ids, text, image = [], [], []
    for batch in batches:
        ids.extend(batch["item_id"].tolist())
        parts = [_matrix(batch[c]) for c in ("text_embedding", "interest_embedding", "cf_embedding") if c in batch]
        text.append(np.concatenate(parts, axis=1))
        if "image_embedding" in batch:
            image.append(_matrix(batch["image_embedding"]))
    order = np.argsort(np.array(ids), kind="stable")
    text_t = torch.from_numpy(np.concatenate(text)[order]).float()
    image_t = torch.from_numpy(np.concatenate(image)[order]).float() if image else None
    return [ids[i] for i in order], text_t, image_t
