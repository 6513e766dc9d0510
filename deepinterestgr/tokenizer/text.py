"""What the text encoder reads for IEID (catalog text plus mined evidence), and how descriptors join the vector."""

from __future__ import annotations

import numpy as np


def good_descriptors(item: dict) -> list[str]:
    """The item's positively labelled descriptors (one without a label yet counts as positive); an item
    none of whose descriptors is labelled good keeps its most probable one (`p_good`).

    The label threshold is set for the judge's balanced accuracy, which leaves a third of a noisy
    catalog's items with no descriptor at all, true ones included; their interest channel would fall
    back to the text alone (bench/interest_ablation.py).
    """
    mined = item.get("descriptors")
    # Ray Data hands list columns over as arrays, whose truth value is ambiguous: test for None.
    named = [d for d in (mined if mined is not None else []) if d.get("descriptor")]
    good = [d["descriptor"] for d in named if d.get("label", 1) == 1]
    if good or not named:
        return good
    return [max(named, key=lambda d: d.get("p_good") or 0.0)["descriptor"]]


def enriched_text(item: dict) -> str:
    """title, description, caption and positively labelled descriptors, one per line, in that order.

    The caption and descriptors come from the mining and labelling stages when they ran.
    """
    parts = [item.get("title") or "", item.get("description") or "", item.get("caption") or ""]
    descriptors = good_descriptors(item)
    if descriptors:
        parts.append("Interests: " + "; ".join(descriptors))
    return "\n".join(part for part in parts if part)


def interest_text(item: dict) -> str:
    """The item's positively labelled descriptors alone ("" without any): the interest channel's input."""
    return "; ".join(good_descriptors(item))


def interest_channel(text: np.ndarray, interests: np.ndarray) -> np.ndarray | None:
    """The vectors appended to the text vectors: each item's descriptor vector, or its own text vector
    where it has no descriptors (an all-zero row), so unmined items keep their geometry. None when no
    item has descriptors: then there is no channel at all."""
    missing = ~interests.any(axis=1)
    if missing.all():
        return None
    return np.where(missing[:, None], text, interests).astype(np.float32)
