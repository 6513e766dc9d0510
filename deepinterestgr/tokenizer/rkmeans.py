"""Residual k-means (faiss): the second tokenizer, with no neural network in between."""

from __future__ import annotations

import logging

# faiss logs each CPU-specific build it tries at INFO: one line per build, in every worker.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402
import numpy as np

from deepinterestgr.tokenizer.rqvae import kmeans


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each row (exact L2 search)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


def residual_kmeans(
    x: np.ndarray, levels: int, codebook_size: int, iters: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Codes [N, levels], each level's centroids, and the residual that entered the last level.

    Each level is fitted on what the previous levels left over.
    """
    residual = np.ascontiguousarray(x, dtype=np.float32)
    codes, centroids = [], []
    for level in range(levels):
        last_input = residual
        c = kmeans(residual, codebook_size, iters, seed + level)
        index = nearest(residual, c)
        codes.append(index)
        centroids.append(c)
        residual = residual - c[index]
    return np.stack(codes, axis=1).astype(np.int64), centroids, last_input
