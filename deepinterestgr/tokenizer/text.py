"""What the text encoder reads for IEID (catalog text plus mined evidence), and how descriptors join the vector."""

from __future__ import annotations

import numpy as np

from deepinterestgr.interests.labels import good_descriptors


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


def interest_channel(text: np.ndarray, interests: np.ndarray) -> np.ndarray | None:
    """The vectors appended to the text vectors: each item's descriptor vector, or its own text vector
    where it has no descriptors (an all-zero row), so unmined items keep their geometry. None when no
    item has descriptors: then there is no channel at all."""
    missing = ~interests.any(axis=1)
    if missing.all():
        return None
    return np.where(missing[:, None], text, interests).astype(np.float32)
