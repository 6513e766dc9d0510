"""What the decoder-only backbones (compact, llm) share: prompt and SID read as one left-padded
sequence, the prompt's key/value cache computed once and shared by its beams (`prefix_attention`),
right-padded or packed training rows."""

from __future__ import annotations

import torch

from deepinterestgr.recommender.backbones.base import IGNORE, Backbone, DecodeState, cached_step, left_pad, right_pad
from deepinterestgr.recommender.prefix_attention import PrefixCache, prefix_step


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token."""
    return (mask.cumsum(dim=1) - 1).clamp_min(0)


class DecoderOnly(Backbone):
    """A causal LM over prompt + SID tokens."""

    packs = True

    def prefill(self, model, ids, mask):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, logits_to_keep=1)
        state = DecodeState(PrefixCache.from_prefill(out.past_key_values, mask), mask)
        return state, torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def step(self, model, state, beam_index, tokens):
        return cached_step(prefix_step, model, state, beam_index, tokens)

    def completion_logits(self, model, prompts, completions, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        ids = torch.cat([ids.to(completions.device), completions], dim=1)
        mask = torch.cat([mask.to(completions.device), torch.ones_like(completions)], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        return logits[:, -completions.shape[1] - 1:]

    def training_batch(self, examples, pad_id, pack_tokens=0):
        """Right-padded ids, attention mask and labels covering each example from its `loss_start`
        (except read-only item tokens); with `pack_tokens`, the examples packed into rows (`packed_batch`)."""
        if pack_tokens:
            return packed_batch(examples, pad_id, pack_tokens)
        ids, mask = right_pad([e.ids for e in examples], pad_id)
        loss_start = torch.tensor([e.loss_start for e in examples])
        read_only = torch.tensor([e.read_only_from or torch.iinfo(torch.long).max for e in examples])
        covered = (torch.arange(ids.shape[1]) >= loss_start[:, None]) & mask.bool() & (ids < read_only[:, None])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(~covered, IGNORE)}


def example_labels(example) -> list[int]:
    """One example's labels: its ids from `loss_start` on, except read-only (item) tokens."""
    read_only = example.read_only_from or torch.iinfo(torch.long).max
    return [IGNORE if i < example.loss_start or token >= read_only else token for i, token in enumerate(example.ids)]


def packed_batch(examples, pad_id: int, pack_tokens: int) -> dict[str, torch.Tensor]:
    """Decoder-only inputs with several examples per row (first fit, longest first, rows of up to
    `pack_tokens` tokens or the longest example). A 4-D boolean mask lets each token attend only to
    earlier tokens of its own example, and positions restart at 0 per example, so every example is
    computed as if it were alone in its row; a padding token attends only to itself. Each example's first
    token has no label (it is context: `loss_start` >= 1), so no loss crosses from one example to the next."""
    capacity = max(pack_tokens, max(len(e.ids) for e in examples))
    rows: list[list] = []
    used: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.ids)):
        fit = next((r for r, n in enumerate(used) if n + len(example.ids) <= capacity), None)
        if fit is None:
            rows.append([example])
            used.append(len(example.ids))
        else:
            rows[fit].append(example)
            used[fit] += len(example.ids)
    width = max(used)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments = -torch.arange(1, width + 1).repeat(len(rows), 1)  # padding: a segment of its own per position
    for r, packed in enumerate(rows):
        at = 0
        for k, example in enumerate(packed):
            n = len(example.ids)
            ids[r, at: at + n] = torch.tensor(example.ids, dtype=torch.long)
            labels[r, at: at + n] = torch.tensor(example_labels(example), dtype=torch.long)
            position_ids[r, at: at + n] = torch.arange(n)
            segments[r, at: at + n] = k
            at += n
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": position_ids, "labels": labels}
