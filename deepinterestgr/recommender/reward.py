"""The interest-aware GRPO reward, term by term, for groups of candidate items.

    R = 1[hit] + l_valid*1[valid] + l_pref*LCP(candidate, target)/levels + l_q*q_target*1[hit]
        (+ MiniOneRec's rank term: -l_rank/log2(rank+2) for wrong candidates when the group holds a hit)
"""

from __future__ import annotations

import numpy as np

from deepinterestgr.config import GRPOConfig


def common_prefix(candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Length of the shared SID prefix: candidates [G, L] codes, target [L] -> [G]."""
    same = candidates == target[None, :]
    return np.cumprod(same, axis=1).sum(axis=1)


def reward_terms(rows: np.ndarray, target: int, codes: np.ndarray, q_target: float, cfg: GRPOConfig) -> dict[str, np.ndarray]:
    """Every term of one group's rewards, and their weighted `total`; row -1 = no valid item."""
    valid = rows >= 0
    hit = (rows == target).astype(np.float64)
    candidate_codes = codes[np.where(valid, rows, 0)]
    prefix = np.where(valid, common_prefix(candidate_codes, codes[target]), 0) / codes.shape[1]
    rank = np.zeros(len(rows))
    if cfg.l_rank and hit.any():
        rank = np.where(hit > 0, 0.0, -1.0 / np.log2(np.arange(len(rows)) + 2))
    terms = {"hit": hit, "valid": valid.astype(np.float64), "prefix": prefix, "quality": q_target * hit, "rank": rank}
    terms["total"] = hit + cfg.l_valid * terms["valid"] + cfg.l_pref * prefix + cfg.l_q * terms["quality"] + cfg.l_rank * rank
    return terms
