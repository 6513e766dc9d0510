"""The SFT loop, step by step: what the Ray Train worker (`actors/sft_trainer.py`) and the in-process
sweep (`bench/sft_sweep.py`) both run, so a sweep's figures are the pipeline's.

One epoch trains on a seeded order of the examples (`epoch_order`), with gradient accumulation,
clipping, the learning-rate schedule and the weight average after every optimizer step; validation
ranks the validation users with the average swapped in (when there is one).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from deepinterestgr.config import SFTConfig
from deepinterestgr.recommender.decoding import lr_factor, sft_loss, training_batch
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import trainable_state
from deepinterestgr.recommender.training import average_weights, epoch_order, target_ranks
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


@dataclass
class EpochStats:
    """One epoch's mean training loss, tokens read and seconds."""

    loss: float
    tokens: int
    seconds: float


def optimizer_and_schedule(model: torch.nn.Module, cfg: SFTConfig, examples_per_epoch: int):
    """AdamW on the trainable parameters and its per-step learning-rate schedule over all epochs."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * math.ceil(math.ceil(examples_per_epoch / cfg.batch_size) / cfg.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_ratio, cfg.lr_schedule))
    return optimizer, scheduler


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one worker's epoch: its example order and its item-token dropout."""
    return seed * 7919 + epoch * 31 + rank


def train_epoch(model: torch.nn.Module, optimizer, scheduler, examples: list[Example], groups: np.ndarray,
                cfg: SFTConfig, vocab: SIDVocab, pad_id: int, seed: int, encoder_decoder: bool,
                average: dict[str, torch.Tensor] | None = None, average_of: torch.nn.Module | None = None,
                autocast=contextlib.nullcontext) -> EpochStats:
    """One epoch of SFT. `model` is what trains (possibly DDP-wrapped); `average_of` the unwrapped model
    whose weights `average` follows (default `model`)."""
    device = next(model.parameters()).device
    model.train()
    order = torch.from_numpy(epoch_order(groups, cfg.targets_per_user, seed))
    # Seeded per worker and epoch, so a run resumed from a checkpoint (a restarted Ray Train worker) drops
    # the same item tokens, and draws the same dropout masks from torch's global generator, as an
    # uninterrupted one.
    item_drop = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    began, tokens, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
    for step, start in enumerate(range(0, len(order), cfg.batch_size)):
        chunk = [examples[i] for i in order[start: start + cfg.batch_size].tolist()]
        batch = training_batch(chunk, pad_id, encoder_decoder, cfg.pack_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            loss = sft_loss(model, batch, encoder_decoder, cfg.label_smoothing, cfg.item_head, vocab, cfg.item_token_dropout, item_drop)
        (loss / cfg.grad_accum).backward()
        if (step + 1) % cfg.grad_accum == 0 or start + cfg.batch_size >= len(order):
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
