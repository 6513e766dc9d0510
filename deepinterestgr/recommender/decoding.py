"""How any model of this package is called to rank and sample SIDs: a prompt pass, one decoding step,
teacher-forced completion scores. Each call goes to the model's own decoding (`backbones.base.backbone_of`):
its backbone's, or an `Ensemble`'s, which sums its members'. Beam search, GRPO and the exact reference
scorer call these functions, never the model directly, so they work with every backbone and ensemble.
"""

from __future__ import annotations

import torch

from deepinterestgr.recommender.backbones.base import backbone_of, left_pad

__all__ = ["completion_logits", "completion_logprobs", "left_pad", "prefill", "step"]


def prefill(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    """Run left-padded prompts once; returns the decoding state and the first SID token's log-probabilities [B, V]."""
    return backbone_of(model).prefill(model, ids, mask)


def step(model: torch.nn.Module, state, beam_index: torch.Tensor, tokens: torch.Tensor):
    """Feed one token per beam; beam `beam_index[i]` is new beam i's parent. Returns the new state and [N, V] log-probs.

    Beams are grouped by prompt, the same number per prompt (row b * W + p is prompt b's beam p); the
    prompt's cache is shared by all of its beams (`prefix_attention`).
    """
    return backbone_of(model).step(model, state, beam_index, tokens)


def completion_logits(model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Teacher-forced logits for completions [N, L] after their prompts: [N, L + 1, V] (one model: what GRPO samples from)."""
    return backbone_of(model).completion_logits(model, prompts, completions, pad_id)


def completion_logprobs(model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Log-probability of each completion token after its prompt: completions [N, L] -> [N, L]."""
    return backbone_of(model).completion_logprobs(model, prompts, completions, pad_id)
