"""How each backbone is called: a prompt pass, one decoding step, teacher-forced SID logits, a training batch.

Decoder-only models read prompt and SID as one left-padded sequence; encoder-decoder models read the
prompt once with a bidirectional encoder and generate the SID with the decoder (started from the pad
token, T5's convention). Either way a prompt's cache is computed once and shared by its beams. Beam search, GRPO, the SFT loop
and the exact reference scorer call these functions, never the model directly, so each works with
both, and with an `Ensemble` of either: each member keeps its own cache and the returned
log-probabilities are the sum of the members'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepinterestgr.recommender.ensemble import Ensemble
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import PAD
from deepinterestgr.recommender.prefix_attention import CrossCache, PrefixCache, cross_step, prefix_step
from deepinterestgr.recommender.vocab import SIDVocab

IGNORE = -100


def _config(model: torch.nn.Module):
    return getattr(model, "module", model).config  # DDP wraps the model


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """True for encoder-decoder models (also when wrapped, e.g. by DDP)."""
    return bool(getattr(_config(model), "is_encoder_decoder", False))


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded token ids and attention mask, so every prompt ends at the last position."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(dim=1) - 1).clamp_min(0)


def _start_tokens(model: torch.nn.Module, rows: int, device) -> torch.Tensor:
    return torch.full((rows, 1), _config(model).decoder_start_token_id, dtype=torch.long, device=device)


@dataclass
class DecodeState:
    """What a decoding step needs from the steps before: the shared cache and the prompt mask."""

    cache: PrefixCache | CrossCache
    mask: torch.Tensor


@dataclass
class EnsembleState:
    """An ensemble's decoding state: each member's own."""

    members: list[DecodeState]


def prefill(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[DecodeState | EnsembleState, torch.Tensor]:
    """Run the prompts once; returns the state and the log-probabilities of the first SID token [B, V]
    (for an `Ensemble`, the sum of its members')."""
    if isinstance(model, Ensemble):
        states, logprobs = zip(*(prefill(member, ids, mask) for member in model.members))
        return EnsembleState(list(states)), torch.stack(logprobs).sum(0)
    if is_encoder_decoder(model):
        encoder_states = getattr(model, "module", model).get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        cache = CrossCache.from_encoder(model, encoder_states, mask)
        parents = torch.zeros((len(ids), 1), dtype=torch.long, device=ids.device)
        cache, logits = cross_step(model, cache, parents, _start_tokens(model, len(ids), ids.device))
        return DecodeState(cache, mask), torch.log_softmax(logits.float(), dim=-1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
    state = DecodeState(PrefixCache.from_prefill(out.past_key_values, mask), mask)
    return state, torch.log_softmax(out.logits[:, -1].float(), dim=-1)


def step(model: torch.nn.Module, state: DecodeState | EnsembleState, beam_index: torch.Tensor,
         tokens: torch.Tensor) -> tuple[DecodeState | EnsembleState, torch.Tensor]:
    """Feed one token per beam; beam `beam_index[i]` is new beam i's parent. Returns the new state and [N, V] log-probs.

    Beams are grouped by prompt, the same number per prompt (row b * W + p is prompt b's beam p); the
    prompt's cache is shared by all of its beams (`prefix_attention`).
    """
    if isinstance(state, EnsembleState):
        steps = [step(member, s, beam_index, tokens) for member, s in zip(model.members, state.members)]
        return EnsembleState([s for s, _ in steps]), torch.stack([lp for _, lp in steps]).sum(0)
    batch, before = len(state.mask), state.cache.beam_keys[0].shape[1]
    after = len(beam_index) // batch
    parents = beam_index.view(batch, after) - torch.arange(batch, device=beam_index.device)[:, None] * before
    advance = cross_step if isinstance(state.cache, CrossCache) else prefix_step
    cache, logits = advance(model, state.cache, parents, tokens.view(batch, after))
    return DecodeState(cache, state.mask), torch.log_softmax(logits.float(), dim=-1)


def completion_logits(model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Teacher-forced logits for completions [N, L] after their prompts: [N, L + 1, V].

    Position i predicts completion token i; the last position predicts the token after the completion.
    One model only: an ensemble's summed log-probabilities are not one distribution to sample from.
    """
    if isinstance(model, Ensemble):
        raise TypeError("completion_logits takes one model, not an ensemble (completion_logprobs sums an ensemble's)")
    device = completions.device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    steps = completions.shape[1]
    if is_encoder_decoder(model):
        decoder_ids = torch.cat([_start_tokens(model, len(ids), device), completions], dim=1)
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    ids = torch.cat([ids, completions], dim=1)
    mask = torch.cat([mask, torch.ones_like(completions)], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    return logits[:, -steps - 1:]


def completion_logprobs(model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Log-probability of each completion token after its prompt: completions [N, L] -> [N, L] (an
    `Ensemble`'s: the sum of its members')."""
    if isinstance(model, Ensemble):
        return torch.stack([completion_logprobs(member, prompts, completions, pad_id) for member in model.members]).sum(0)
    steps = completions.shape[1]
    logprobs = torch.log_softmax(completion_logits(model, prompts, completions, pad_id)[:, :steps].float(), dim=-1)
    return logprobs.gather(2, completions.unsqueeze(-1)).squeeze(-1)


def training_batch(examples: list[Example], pad_id: int, encoder_decoder: bool, pack_tokens: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs with labels for a batch of SFT examples.

    Decoder-only: right-padded ids, attention mask and labels covering each example from its
    `loss_start`; with `pack_tokens`, the examples packed into rows (`packed_batch`). Encoder-decoder:
    the context (ids before `loss_start`) goes to the encoder and the rest becomes the labels (the model
    shifts them into decoder inputs). Masks come from lengths, not from `pad_id`: an LLM's pad token is
    often its EOS, which real examples contain.
    """
    if pack_tokens and not encoder_decoder:
        return packed_batch(examples, pad_id, pack_tokens)
    if encoder_decoder:
        sources = [e.ids[: e.loss_start] for e in examples]
        targets = [e.ids[e.loss_start:] for e in examples]
        ids, mask = _right_pad(sources, pad_id)
        labels, label_mask = _right_pad(targets, pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(label_mask == 0, IGNORE)}
    ids, mask = _right_pad([e.ids for e in examples], pad_id)
    labels = torch.full_like(ids, IGNORE)
    for row, example in enumerate(examples):
        n = len(example.ids)
        labels[row, example.loss_start: n] = ids[row, example.loss_start: n]
    read_only = torch.tensor([e.read_only_from or torch.iinfo(torch.long).max for e in examples])
    labels = labels.masked_fill(labels >= read_only[:, None], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _labels(example: Example) -> list[int]:
    """One example's labels: its ids from `loss_start` on, except read-only (item) tokens."""
    read_only = example.read_only_from or torch.iinfo(torch.long).max
    return [IGNORE if i < example.loss_start or token >= read_only else token for i, token in enumerate(example.ids)]


def packed_batch(examples: list[Example], pad_id: int, pack_tokens: int) -> dict[str, torch.Tensor]:
    """Decoder-only inputs with several examples per row (first fit, longest first, rows of up to
    `pack_tokens` tokens or the longest example). A 4-D boolean mask lets each token attend only to
    earlier tokens of its own example, and positions restart at 0 per example, so every example is
    computed as if it were alone in its row; a padding token attends only to itself. Each example's first
    token has no label (it is context: `loss_start` >= 1), so no loss crosses from one example to the next."""
    capacity = max(pack_tokens, max(len(e.ids) for e in examples))
    rows: list[list[Example]] = []
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
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = -torch.arange(1, width + 1).repeat(len(rows), 1)  # padding: a segment of its own per position
    for r, packed in enumerate(rows):
        at = 0
        for k, example in enumerate(packed):
            n = len(example.ids)
            ids[r, at: at + n] = torch.tensor(example.ids, dtype=torch.long)
            labels[r, at: at + n] = torch.tensor(_labels(example), dtype=torch.long)
            positions[r, at: at + n] = torch.arange(n)
            segments[r, at: at + n] = k
            at += n
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": positions, "labels": labels}


def drop_item_tokens(ids: torch.Tensor, vocab: SIDVocab, rate: float, generator: torch.Generator) -> torch.Tensor:
    """A copy of `ids` with each item token (ids past the SID vocabulary) replaced by the pad token with
    probability `rate`; the generator decides, on the generator's device."""
    drop = torch.rand(ids.shape, generator=generator, device=generator.device).to(ids.device) < rate
    return ids.masked_fill(drop & (ids >= vocab.size), PAD)


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], encoder_decoder: bool, label_smoothing: float = 0.0,
             item_head: float = 0.0, vocab: SIDVocab | None = None, item_token_dropout: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of a `training_batch`, optionally label-smoothed,
    plus `item_head` x the item head's loss (`item_head_loss`; compact models with item tokens).
    With `item_token_dropout` the model reads the batch through `drop_item_tokens`; the item head's
    targets still come from the batch as it is."""
    inputs = batch
    if item_token_dropout:
        inputs = {**batch, "input_ids": drop_item_tokens(batch["input_ids"], vocab, item_token_dropout, generator)}
    out = model(**inputs)
    if not label_smoothing:
        loss = out.loss
    else:
        logits, labels = out.logits, batch["labels"]
        if not encoder_decoder:
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=IGNORE, label_smoothing=label_smoothing)
    if item_head:
        loss = loss + item_head * item_head_loss(out.logits, batch["input_ids"], batch["labels"], vocab)
    return loss


def item_head_loss(logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, vocab: SIDVocab) -> torch.Tensor:
    """Cross-entropy of the next item over the item-token rows only, at every position that predicts an
    item's first SID code (compact format with item tokens: each item is its SID, then its item token).

    A softmax over items, as SASRec's, beside the per-level SID softmaxes: it ranks every item on its
    own, so rare items are not pushed out by popular SID siblings. The SID loss pushes all item rows down
    by the same amount, which this softmax cannot see, so the two do not compete.
    """
    items = logits.shape[-1] - vocab.size
    first = (ids[:, 1:] >= int(vocab.starts[0])) & (ids[:, 1:] < int(vocab.starts[0]) + vocab.sizes[0]) & (labels[:, 1:] != IGNORE)
    row, pos = first.nonzero(as_tuple=True)
    token_at = pos + 1 + vocab.levels
    target = ids[row, token_at.clamp(max=ids.shape[1] - 1)] - vocab.size
    if items <= 0 or bool(((token_at >= ids.shape[1]) | (target < 0) | (target >= items)).any()):
        raise ValueError("the item head needs compact examples with an item token after every SID (sft.item_tokens=true)")
    return torch.nn.functional.cross_entropy(logits[row, pos, vocab.size:].float(), target)


def lr_factor(step: int, total_steps: int, warmup_ratio: float, schedule: str) -> float:
    """The learning-rate multiplier at an optimizer step: linear warmup, then constant or cosine decay to 0."""
    warmup = int(total_steps * warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
