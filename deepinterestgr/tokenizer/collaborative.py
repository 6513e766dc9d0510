"""Collaborative item vectors from training-split interactions: windowed co-occurrence PPMI and a
truncated SVD of it, or the item table of a SASRec trained on them.

Items bought close together in users' training sequences get close vectors. Fused with the text
(+ interest) embeddings before the RQ-VAE, they make items that share a SID prefix also share
buyers, which a sequence model can use. Only rows with split == "train" are read, so validation and
test targets cannot leak into the SIDs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse
from scipy.sparse.linalg import svds

from deepinterestgr.baselines.sasrec import epoch_progress, fit_sasrec
from deepinterestgr.config import SASRecShape


def training_sequences(interactions: pa.Table, item_ids: list[str]) -> list[np.ndarray]:
    """Each user's training items (rows of `item_ids`, time order); unknown items are skipped."""
    table = interactions.filter(pc.equal(interactions.column("split"), "train")).select(["user_id", "item_id", "timestamp"])
    table = table.sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    rows = pc.index_in(table.column("item_id"), value_set=pa.array(item_ids)).fill_null(-1).to_numpy()
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    if len(users) == 0:
        return []
    boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1
    return [seq[seq >= 0] for seq in np.split(rows, boundaries)]


def cooccurrence_vectors(sequences: list[np.ndarray], num_items: int, dim: int, window: int, seed: int) -> np.ndarray:
    """[num_items, dim] vectors: SVD of the PPMI of co-occurrences within `window` positions (weight 1/distance).

    Rows of items that never occur in training are zero. Deterministic for a seed.
    """
    heads, tails, weights = [], [], []
    for seq in sequences:
        for distance in range(1, min(window, len(seq) - 1) + 1):
            heads.append(seq[:-distance])
            tails.append(seq[distance:])
            weights.append(np.full(len(seq) - distance, 1.0 / distance))
    if not heads:
        return np.zeros((num_items, dim), dtype=np.float32)
    h, t, w = np.concatenate(heads), np.concatenate(tails), np.concatenate(weights)
    counts = sparse.coo_matrix((np.concatenate([w, w]), (np.concatenate([h, t]), np.concatenate([t, h]))),
                               shape=(num_items, num_items)).tocsr()
    counts.sum_duplicates()
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    total = row_sums.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sums[coo.row] * row_sums[coo.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(num_items, num_items))
    k = min(dim, num_items - 1)
    v0 = np.random.default_rng(seed).standard_normal(num_items)
    u, s, _ = svds(ppmi.astype(np.float64), k=k, v0=v0)
    order = np.argsort(-s)
    vectors = np.zeros((num_items, dim), dtype=np.float32)
    vectors[:, :k] = (u[:, order] * np.sqrt(s[order])).astype(np.float32)
    # An eigenvector's sign is arbitrary: fix it so that the same data gives the same vectors.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)])
    return vectors * np.where(signs == 0, 1, signs)


def match_scale(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`vectors` rescaled so their mean per-dimension spread equals `reference`'s (each dimension then weighs alike)."""
    spread = vectors.std(axis=0).mean()
    return vectors if spread == 0 else vectors * (reference.std(axis=0).mean() / spread)


def sasrec_vectors(sequences: list[np.ndarray], num_items: int, cfg: SASRecShape, seed: int) -> np.ndarray:
    """[num_items, cfg.hidden_size]: the item table of a SASRec trained on the training sequences.

    Each sequence's last item is held out to choose the epoch (so no validation or test interaction is
    read); rows of items that never occur in training are zero, as in `cooccurrence_vectors`.
    """
    lists = [seq.tolist() for seq in sequences]
    prefixes = [s[:-1] if len(s) >= 3 else s for s in lists]
    held_out = np.array([s[-1] if len(s) >= 3 else -1 for s in lists], dtype=np.int64)
    model, _ = fit_sasrec(prefixes, held_out, num_items, cfg, seed, on_epoch=epoch_progress("tokenize: collaborative SASRec", cfg.epochs))
    vectors = model.items.weight[1:].detach().numpy().astype(np.float32)
    seen = np.zeros(num_items, dtype=bool)
    if lists:
        seen[np.concatenate(sequences).astype(np.int64)] = True
    vectors[~seen] = 0.0
    return vectors
