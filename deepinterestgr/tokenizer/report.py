"""The tokenizer report: code statistics before and after disambiguation, and a utilisation plot."""

from __future__ import annotations

import io

import numpy as np

from deepinterestgr.tokenizer.sids import collision_rate, level_stats


def sid_report(raw_codes: np.ndarray, final_codes: np.ndarray, sizes: list[int]) -> dict:
    """Collision rate before disambiguation, per-level utilisation/perplexity, SID lengths."""
    lengths, counts = np.unique(np.full(len(final_codes), final_codes.shape[1]), return_counts=True)
    return {
        "items": int(len(raw_codes)),
        "collision_rate_before": collision_rate(raw_codes),
        "collision_rate_after": collision_rate(final_codes),
        "levels": level_stats(raw_codes, sizes),
        "extra_level_max": int(final_codes[:, -1].max()) + 1 if final_codes.shape[1] > raw_codes.shape[1] else 0,
        "sid_length": {int(k): int(v) for k, v in zip(lengths, counts)},
    }


def utilisation_png(report: dict, title: str) -> bytes:
    """A bar chart of utilisation and normalised perplexity per level, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    x = np.arange(len(levels))
    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.bar(x - 0.2, [s["utilisation"] for s in levels], 0.4, label="utilisation")
    axis.bar(x + 0.2, [s["perplexity"] / max(s["perplexity"] for s in levels) for s in levels], 0.4, label="perplexity (rel.)")
    axis.set_xticks(x, [f"level {i}" for i in x])
    axis.set_ylim(0, 1.05)
    axis.set_title(f"{title}: collisions before disambiguation {report['collision_rate_before']:.2%}", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
