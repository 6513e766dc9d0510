"""What the text encoder reads for IEID (catalog text plus mined evidence), and how descriptors join the vector."""

from __future__ import annotations

import numpy as np

from deepinterestgr.interests.labels import good_descriptors, named_descriptors


def enriched_text(item: dict) -> str:
    """title, description, caption and the descriptors that count (`good_descriptors`), one per line, in that order.

    The caption and descriptors come from the mining and labelling stages when they ran.
    """
    parts = [item.get("title") or "", item.get("description") or "", item.get("caption") or ""]
    descriptors = good_descriptors(item)
    if descriptors:
        parts.append("Interests: " + "; ".join(descriptors))
    return "\n".join(part for part in parts if part)


def interest_text(item: dict) -> str:
    """The descriptors that count (`good_descriptors`) alone ("" without any): the interest channel's input."""
    return "; ".join(good_descriptors(item))


def weighted_descriptors(item: dict) -> list[tuple[str, float]]:
    """Every named descriptor with its weight for `tokenize.interest_weights=p_good`: the label stage's
    p_good, or 1 for a descriptor it has not scored."""
    return [(d["descriptor"], 1.0 if d.get("p_good") is None else float(d["p_good"])) for d in named_descriptors(item)]


def is_scored(item: dict) -> bool:
    """Whether the label stage scored any of the item's descriptors (gave it a p_good)."""
    return any(d.get("p_good") is not None for d in named_descriptors(item))


def weighted_mean(vectors: np.ndarray, weights: np.ndarray, owners: np.ndarray, rows: int) -> np.ndarray:
    """Per owner row, the L2-normalised weighted sum of its vectors ([rows, D]; all zeros for a row
    that owns none or whose weights are all 0)."""
    out = np.zeros((rows, vectors.shape[1]), dtype=np.float64)
    np.add.at(out, owners, vectors * weights[:, None])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norms > 0, out / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def interest_channel(text: np.ndarray, interests: np.ndarray) -> np.ndarray | None:
    """The vectors appended to the text vectors: each item's descriptor vector, or its own text vector
    where it has no descriptors (an all-zero row), so unmined items keep their geometry. None when no
    item has descriptors: then there is no channel at all."""
    missing = ~interests.any(axis=1)
    if missing.all():
        return None
    return np.where(missing[:, None], text, interests).astype(np.float32)
