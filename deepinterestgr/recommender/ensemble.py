"""Several models trained alike from different seeds that rank as one (`sft.members`).

From-scratch recommenders on small data land far apart from one training seed to the next; the sum
of a few members' scores is steadier and better than any one of them (README, Results). An ensemble
decodes itself (`EnsembleDecoding`: each member with its own cache, log-probabilities summed), so the
beam search, evaluate and the server use it as they use one model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepinterestgr.recommender.backbones.base import Decoding, attach, backbone_of


@dataclass
class EnsembleState:
    """An ensemble's decoding state: each member's own."""

    members: list


class EnsembleDecoding(Decoding):
    """Prefill, step and completion scores as the sum of the members'; not tunable by GRPO."""

    tunable = False

    def prefill(self, model, ids, mask):
        states, logprobs = zip(*(backbone_of(m).prefill(m, ids, mask) for m in model.members))
        return EnsembleState(list(states)), torch.stack(logprobs).sum(0)

    def step(self, model, state, beam_index, tokens):
        steps = [backbone_of(m).step(m, s, beam_index, tokens) for m, s in zip(model.members, state.members)]
        return EnsembleState([s for s, _ in steps]), torch.stack([lp for _, lp in steps]).sum(0)

    def completion_logits(self, model, prompts, completions, pad_id):
        raise TypeError("an ensemble's summed log-probabilities are not one distribution to sample from: "
                        "GRPO tunes one model (sft.members=1)")

    def completion_logprobs(self, model, prompts, completions, pad_id):
        return torch.stack([backbone_of(m).completion_logprobs(m, prompts, completions, pad_id) for m in model.members]).sum(0)


class Ensemble(torch.nn.Module):
    """Two or more members with the same vocabulary; not trainable as one (its decoding is not `tunable`)."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        sizes = {m.config.vocab_size for m in members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members must share one vocabulary, got sizes {sorted(sizes)}")
        self.members = torch.nn.ModuleList(members)
        attach(self, ENSEMBLE)

    @property
    def config(self):
        """The first member's transformers config (every member's vocabulary is the same)."""
        return self.members[0].config


ENSEMBLE = EnsembleDecoding()
