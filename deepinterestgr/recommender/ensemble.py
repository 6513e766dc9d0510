"""Several models trained alike from different seeds that rank as one (`sft.members`).

From-scratch recommenders on small data land far apart from one training seed to the next; the sum
of a few members' scores is steadier and better than any one of them (README, Results). `decoding`
runs each member with its own cache and sums their log-probabilities, so the beam search, evaluate
and the server use an ensemble as they use one model.
"""

from __future__ import annotations

import torch


class Ensemble(torch.nn.Module):
    """Two or more members with the same vocabulary and backbone; not trainable as one (GRPO refuses it)."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        sizes = {m.config.vocab_size for m in members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members must share one vocabulary, got sizes {sorted(sizes)}")
        self.members = torch.nn.ModuleList(members)

    @property
    def config(self):
        """The first member's transformers config (every member's backbone and vocabulary are the same)."""
        return self.members[0].config
