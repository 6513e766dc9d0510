"""The SFT loop, top to bottom: the epoch's example order, the optimizer and its schedule, the loss (SID
cross-entropy, the item head, item-token dropout), one epoch, the weight average, validation. What the
Ray Train worker (`actors/sft_trainer.py`) and the in-process sweep (`bench/sft_sweep.py`) both run, so
a sweep's figures are the pipeline's.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from deepinterestgr.config import SFTConfig
from deepinterestgr.recommender.backbones.base import IGNORE, backbone_of
from deepinterestgr.recommender.distillation import distillation_loss
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import PAD, trainable_state
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


@dataclass
class EpochStats:
    """One epoch's mean training loss, tokens read and seconds."""

    loss: float
    tokens: int
    seconds: float


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one worker's epoch: its example order and its item-token dropout."""
    return seed * 7919 + epoch * 31 + rank


def epoch_order(groups: np.ndarray, per_group: int, seed: int) -> np.ndarray:
    """A shuffled order of example indices for one epoch, at most `per_group` of each group (0 = all).

    With a cap, each epoch draws a fresh seeded sample per group (a user's targets), so long histories
    are covered across epochs while an epoch costs at most `per_group` examples per user.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random(len(groups))
    if per_group:
        by_group = np.lexsort((keys, groups))
        sorted_groups = groups[by_group]
        starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
        rank = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
        keep = np.zeros(len(groups), dtype=bool)
        keep[by_group[rank < per_group]] = True
        chosen = np.flatnonzero(keep)
    else:
        chosen = np.arange(len(groups))
    return chosen[np.argsort(keys[chosen], kind="stable")]


def epoch_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, bucket: int, seed: int,
                  batch_tokens: int = 0, packed: bool = False) -> list[np.ndarray]:
    """The epoch's order cut into batches of `batch_size` examples, or with `batch_tokens` > 0 into batches that
    each compute at most that many token positions (`token_batches`). With `bucket` > 0, each run of `bucket`
    x `batch_size` examples is first sorted by example length, so a batch holds examples of similar length
    (less padding; under a token budget, short examples come in larger batches), and the batches are then
    shuffled (seeded). Every example comes once."""
    if bucket:
        window = bucket * batch_size
        order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                                for chunk in (order[start: start + window] for start in range(0, len(order), window))] or [order])
    if batch_tokens:
        batches = token_batches(order, lengths, batch_tokens, packed)
    else:
        batches = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    if not bucket:
        return batches
    return [batches[i] for i in np.random.default_rng(seed).permutation(len(batches))]


def token_batches(order: np.ndarray, lengths: np.ndarray, budget: int, packed: bool) -> list[np.ndarray]:
    """`order` cut in turn into batches that each compute at most `budget` token positions: the example count
    x the longest example when rows are padded, the sum of lengths when they are packed (`sft.pack_tokens`).
    An example longer than the budget gets a batch of its own."""
    batches, start, longest, total = [], 0, 0, 0
    for i, length in enumerate(lengths[order].tolist()):
        longest, total = max(longest, length), total + length
        if i > start and (total if packed else longest * (i - start + 1)) > budget:
            batches.append(order[start:i])
            start, longest, total = i, length, length
    return batches + [order[start:]] if len(order) else batches


def even_out(batches: list[np.ndarray], count: int) -> list[np.ndarray]:
    """`batches` split until there are `count` of them, the largest first (in half, keeping their place), so
    that a worker with fewer batches than its peers runs as many steps: under DDP every step's backward
    all-reduces the gradients with every worker's."""
    batches = list(batches)
    while len(batches) < count:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        if len(batches[largest]) < 2:
            raise ValueError(f"sft: a worker holds {sum(len(b) for b in batches)} examples for the {count} steps of its "
                             "peers; train on fewer workers (sft.num_workers) or with smaller batches")
        half = len(batches[largest]) // 2
        batches[largest: largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


def agreed_batches(batches: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """This worker's batches, evened out to the largest count of any DDP worker (itself alone: unchanged).
    Shards differ in size, and under a token budget in batch count, from one worker to the next."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return batches
    count = torch.tensor([len(batches)], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return even_out(batches, int(count))


def epoch_plan(examples: list[Example], groups: np.ndarray, cfg: SFTConfig, seed: int) -> list[np.ndarray]:
    """One worker's batches for an epoch (before `agreed_batches`): the seeded order of `epoch_order`, cut by
    `epoch_batches` under the config's batch size or token budget and length buckets."""
    order = epoch_order(groups, cfg.targets_per_user, seed)
    return epoch_batches(order, np.array([len(e.ids) for e in examples]), cfg.batch_size, cfg.length_buckets, seed,
                         cfg.batch_tokens, bool(cfg.pack_tokens))


def lr_factor(step: int, total_steps: int, warmup_ratio: float, schedule: str) -> float:
    """The learning-rate multiplier at an optimizer step: linear warmup, then constant or cosine decay to 0."""
    warmup = int(total_steps * warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimizer_and_schedule(model: torch.nn.Module, cfg: SFTConfig, batches_per_epoch: int):
    """AdamW on the trainable parameters and its per-step learning-rate schedule over all epochs
    (`batches_per_epoch`: one epoch's `epoch_plan`; under a token budget epochs differ by a few batches)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_ratio, cfg.lr_schedule))
    return optimizer, scheduler


def compiled(model: torch.nn.Module, cfg: SFTConfig) -> torch.nn.Module:
    """`model` with its forward pass compiled by `sft.compile` (itself when off). The compiled module shares
    the parameters, so checkpoints, the weight average and validation keep using `model`; shapes are
    dynamic because every batch has its own length."""
    if cfg.compile == "off":
        return model
    return torch.compile(model, mode=cfg.compile, dynamic=True)


def drop_item_tokens(ids: torch.Tensor, vocab: SIDVocab, rate: float, generator: torch.Generator) -> torch.Tensor:
    """A copy of `ids` with each item token (ids past the SID vocabulary) replaced by the pad token with
    probability `rate`; the generator decides, on the generator's device."""
    drop = torch.rand(ids.shape, generator=generator, device=generator.device).to(ids.device) < rate
    return ids.masked_fill(drop & (ids >= vocab.size), PAD)


def first_code_positions(ids: torch.Tensor, labels: torch.Tensor, vocab: SIDVocab) -> torch.Tensor:
    """Where a position predicts a labelled item's first SID code ([batch, length - 1], the positions of
    `logits[:, :-1]`): where the item head is trained."""
    first = int(vocab.starts[0])
    return (ids[:, 1:] >= first) & (ids[:, 1:] < first + vocab.sizes[0]) & (labels[:, 1:] != IGNORE)


def item_head_loss(logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, vocab: SIDVocab) -> torch.Tensor:
    """Cross-entropy of the next item over the item-token rows only, at every position that predicts an
    item's first SID code (compact format with item tokens: each item is its SID, then its item token).

    A softmax over items, as SASRec's, beside the per-level SID softmaxes: it ranks every item on its
    own, so rare items are not pushed out by popular SID siblings. The SID loss pushes all item rows down
    by the same amount, which this softmax cannot see, so the two do not compete.
    """
    items = logits.shape[-1] - vocab.size
    row, pos = first_code_positions(ids, labels, vocab).nonzero(as_tuple=True)
    token_at = pos + 1 + vocab.levels
    target = ids[row, token_at.clamp(max=ids.shape[1] - 1)] - vocab.size
    if items <= 0 or bool(((token_at >= ids.shape[1]) | (target < 0) | (target >= items)).any()):
        raise ValueError("the item head needs compact examples with an item token after every SID (sft.item_tokens=true)")
    return torch.nn.functional.cross_entropy(logits[row, pos, vocab.size:].float(), target)


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0,
             item_head: float = 0.0, vocab: SIDVocab | None = None, item_token_dropout: float = 0.0,
             generator: torch.Generator | None = None, labelled_logits: bool = False,
             teachers: list[torch.nn.Module] | None = None, distill: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of a backbone's `training_batch`, optionally
    label-smoothed, plus `item_head` x the item head's loss (`item_head_loss`; compact models with item
    tokens). With `item_token_dropout` the model reads the batch through `drop_item_tokens`; the item
    head's targets still come from the batch as it is. With `labelled_logits` (decoder-only transformers
    models, no item head) the model computes logits only at the positions some row has a label after:
    the same loss, without the output layer's work on prompts. With `teachers` and `distill` > 0 (compact),
    plus `distill` x the KL from the teachers' mean distribution (`distillation.distillation_loss`)."""
    inputs = batch
    if item_token_dropout:
        inputs = {**batch, "input_ids": drop_item_tokens(batch["input_ids"], vocab, item_token_dropout, generator)}
    if labelled_logits:
        if item_head or distill:
            raise ValueError("labelled_logits leaves out the positions the item head and distillation read")
        labels = batch["labels"]
        keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, keep + 1].reshape(-1),
                                                 ignore_index=IGNORE, label_smoothing=label_smoothing)
    out = model(**inputs)
    if not label_smoothing:
        loss = out.loss
    else:
        logits, labels = out.logits, batch["labels"]
        if backbone_of(model).shifts_labels:
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=IGNORE, label_smoothing=label_smoothing)
    if item_head:
        loss = loss + item_head * item_head_loss(out.logits, batch["input_ids"], batch["labels"], vocab)
    if distill:
        first = first_code_positions(batch["input_ids"], batch["labels"], vocab) if item_head else None
        loss = loss + distill * distillation_loss(out.logits, teachers, batch, vocab, item_head, first)
    return loss


def average_weights(average: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """One step of an exponential moving average of a model's trainable parameters, in place."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in average:
                average[name].mul_(decay).add_(param.detach(), alpha=1.0 - decay)


def train_epoch(model: torch.nn.Module, optimizer, scheduler, examples: list[Example], groups: np.ndarray,
                cfg: SFTConfig, vocab: SIDVocab, pad_id: int, seed: int,
                average: dict[str, torch.Tensor] | None = None, average_of: torch.nn.Module | None = None,
                autocast=contextlib.nullcontext, teachers: list[torch.nn.Module] | None = None) -> EpochStats:
    """One epoch of SFT. `model` is what trains (possibly DDP-wrapped); `average_of` the unwrapped model
    whose weights `average` follows (default `model`); with `teachers` (trained members, in eval mode)
    the model is distilled from them with weight `sft.distill`."""
    device = next(model.parameters()).device
    backbone = backbone_of(model)
    model.train()
    batches = agreed_batches(epoch_plan(examples, groups, cfg, seed), device)
    # Seeded per worker and epoch, so a run resumed from a checkpoint (a restarted Ray Train worker) drops
    # the same item tokens, and draws the same dropout masks from torch's global generator, as an
    # uninterrupted one.
    item_drop = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    began, tokens, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
    for step, indices in enumerate(batches):
        chunk = [examples[i] for i in indices.tolist()]
        batch = backbone.training_batch(chunk, pad_id, cfg.pack_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            loss = sft_loss(model, batch, cfg.label_smoothing, cfg.item_head, vocab, cfg.item_token_dropout, item_drop,
                            backbone.labelled_logits(cfg), teachers, cfg.distill if teachers else 0.0)
        (loss / cfg.grad_accum).backward()
        if (step + 1) % cfg.grad_accum == 0 or step == len(batches) - 1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average_weights(average, average_of or model, cfg.ema_decay)
        tokens += sum(len(e.ids) for e in chunk)
        loss_sum, steps = loss_sum + float(loss.detach()), steps + 1
    return EpochStats(loss_sum / max(steps, 1), tokens, time.perf_counter() - began)


def weight_average(model: torch.nn.Module, cfg: SFTConfig) -> dict[str, torch.Tensor] | None:
    """The start of the weight average (`sft.ema_decay`): a copy of the trainable parameters; None without one."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if cfg.ema_decay else None


@contextlib.contextmanager
def averaged(model: torch.nn.Module, average: dict[str, torch.Tensor] | None):
    """The model with the weight average in place (when there is one) inside the block; yields the live
    weights it swapped out (None without an average) and puts them back after."""
    if average is None:
        yield None
        return
    live = trainable_state(model)
    model.load_state_dict(average, strict=False)
    try:
        yield live
    finally:
        model.load_state_dict(live, strict=False)


def validation_ranks(model: torch.nn.Module, prompts: list[list[int]], targets: np.ndarray, trie: SIDTrie, vocab: SIDVocab,
                     cfg: SFTConfig, pad_id: int, autocast=contextlib.nullcontext) -> np.ndarray:
    """Each validation target's rank under the model as it is (the search and weights of every ranking)."""
    with autocast():
        return target_ranks(model, prompts, targets, trie, vocab, cfg.beam_width, pad_id=pad_id, item_weight=cfg.ranking_item_weight)
