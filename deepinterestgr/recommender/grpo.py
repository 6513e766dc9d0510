"""The GRPO objective for SID generation: group advantages, token log-probabilities, clipped loss with KL.

Rollouts come from the constrained beam search (`beam_search`) or `constrained_samples`, so every
candidate is a valid SID; the loss covers the SID tokens of each candidate given its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepinterestgr.recommender.decoding import completion_logits
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group (row); a group of equal rewards gets zeros."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


@dataclass
class LossStats:
    loss: float
    kl: float
    clip_fraction: float


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              weights: torch.Tensor, clip_eps: float, beta: float) -> tuple[torch.Tensor, LossStats]:
    """Clipped-ratio policy loss per token, plus beta * KL to the reference (k3 estimator).

    logp/old_logp/ref_logp [N, L] per token, advantages [N] per candidate, weights [N] (0 drops a
    candidate, e.g. a missing beam).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    log_ratio_ref = ref_logp - logp
    kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1
    per_token = -(surrogate - beta * kl)
    w = weights.unsqueeze(1).expand_as(per_token)
    denom = w.sum().clamp_min(1.0)
    loss = (per_token * w).sum() / denom
    clipped = ((ratio - 1).abs() > clip_eps).float()
    stats = LossStats(float(loss.detach()), float((kl.detach() * w).sum() / denom), float((clipped * w).sum() / denom))
    return loss, stats


@torch.no_grad()
def constrained_samples(model: torch.nn.Module, prompts: list[list[int]], trie: SIDTrie, vocab: SIDVocab, n: int,
                        temperature: float, generator: torch.Generator, pad_id: int) -> np.ndarray:
    """n SIDs per prompt sampled level by level among the trie's allowed codes: item rows [B, n]."""
    device = next(model.parameters()).device
    repeated = [p for p in prompts for _ in range(n)]
    nodes = torch.zeros(len(repeated), dtype=torch.long)
    chosen = torch.zeros((len(repeated), 0), dtype=torch.long, device=device)
    for level, size in enumerate(vocab.sizes):
        logits = completion_logits(model, repeated, chosen, pad_id)[:, -1]
        start = int(vocab.starts[level])
        level_logits = logits[:, start : start + size].float().cpu() / temperature
        children = trie.children(level, nodes)
        level_logits = level_logits.masked_fill(children < 0, float("-inf"))
        code = torch.multinomial(torch.softmax(level_logits, dim=-1), 1, generator=generator).squeeze(1)
        nodes = children.gather(1, code.unsqueeze(1)).squeeze(1)
        chosen = torch.cat([chosen, (code + start).to(device).unsqueeze(1)], dim=1)
    return nodes.view(len(prompts), n).numpy()
