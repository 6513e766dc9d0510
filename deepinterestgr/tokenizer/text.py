"""The enriched item text the text encoder reads (IEID): catalog text plus mined evidence."""

from __future__ import annotations


def enriched_text(item: dict) -> str:
    """title, description, caption and positively labelled descriptors, one per line, in that order.

    The caption and descriptors come from the mining and labelling stages when they ran; a
    descriptor without a label yet counts as positive.
    """
    parts = [item.get("title") or "", item.get("description") or "", item.get("caption") or ""]
    mined = item.get("descriptors")
    # Ray Data hands list columns over as arrays, whose truth value is ambiguous: test for None.
    descriptors = [d["descriptor"] for d in (mined if mined is not None else []) if d.get("descriptor") and d.get("label", 1) == 1]
    if descriptors:
        parts.append("Interests: " + "; ".join(descriptors))
    return "\n".join(part for part in parts if part)
