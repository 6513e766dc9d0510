"""The Ray Train worker loop for SFT of the generative recommender (DDP; gloo or nccl), any backbone.

Like the RQ-VAE loop, every worker reads the whole (small) example dataset and trains on rows
rank::world_size, so shards are the same in every run. Validation users are split the same way and
their hit counts are summed across workers, so every worker takes the same early-stopping decision.
Checkpoints hold only the trained parameters (all of the compact model; LoRA and SID rows of an LLM);
with `sft.ema_decay` they hold the weight average, which is validated and saved, and the live weights.
"""

from __future__ import annotations

import math

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from actors.train_report import read_checkpoint, report_epoch, set_worker_log_level
from deepinterestgr.config import SFTConfig
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import trainable_state
from deepinterestgr.recommender.sft_loop import (averaged, compiled, epoch_plan, epoch_seed, optimizer_and_schedule,
                                                 train_epoch, validation_ranks, weight_average)
from deepinterestgr.tokenizer.sids import SIDTrie

CHECKPOINT_FILE = "sft.pt"


def train_sft(config: dict) -> None:
    set_worker_log_level(config["log_level"])
    cfg = SFTConfig(**config["sft"])
    seed, sizes, pad_id = config["seed"], config["sizes"], config["pad_id"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    rows = [r for b in ray.train.get_dataset_shard("train").iter_batches(batch_size=4096, batch_format="pandas")
            for r in b.to_dict("records")]
    rows = sorted(rows, key=lambda r: r["key"])[rank::world]
    examples = [Example(list(r["ids"]), int(r["loss_start"]), int(r["read_only_from"])) for r in rows]
    groups = np.array([int(r["group"]) for r in rows])
    valid_prompts = config["valid_prompts"][rank::world]
    valid_targets = np.array(config["valid_targets"])[rank::world]
    trie = SIDTrie.from_bytes(config["trie"])

    backbone = backbones.get(cfg.backbone)
    model, vocab, _ = backbone.build(cfg, sizes, seed, gpu=cfg.use_gpu, items=config["items"], item_rows=config["item_rows"])
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(epoch_plan(examples, groups, cfg, epoch_seed(seed, 0, rank))))
    start_epoch, best, stale = 0, -1.0, 0
    device = ray.train.torch.get_device()
    # Moved before a resumed optimizer state is loaded: loading casts that state to the weights' device.
    model.to(device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
    # With ema_decay the checkpoint's "model" is the average (what is validated and saved) and "live"
    # holds the weights that training continues from.
    average = weight_average(model, cfg)
    if checkpoint and average is not None:
        average = {n: v.to(device) for n, v in state["model"].items() if n in average}
        model.load_state_dict(state["live"], strict=False)
    trained = compiled(ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None), cfg)
    autocast = backbone.autocast(cfg)
    # A distilled student's teachers: the trained members, read only.
    teachers = [t.to(device).eval().requires_grad_(False) for t in config.get("teachers") or []]

    for epoch in range(start_epoch, cfg.epochs):
        stats = train_epoch(trained, optimizer, scheduler, examples, groups, cfg, vocab, pad_id, epoch_seed(seed, epoch, rank),
                            average, model, autocast, teachers)
        if (epoch + 1) % cfg.eval_every and epoch != cfg.epochs - 1:
            continue

        with averaged(model, average) as live:
            ranks = validation_ranks(model, valid_prompts, valid_targets, trie, vocab, cfg, pad_id, autocast)
            local = ranking_metrics(ranks, (10,)) if len(ranks) else {"hr@10": 0.0, "ndcg@10": 0.0}
            n = float(len(ranks))
            sums = torch.tensor([local["hr@10"] * n, local["ndcg@10"] * n, n, stats.tokens / stats.seconds])
            if world > 1:
                dist.all_reduce(sums)
            hr, ndcg = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()
            improved = ndcg > best
            best, stale = (ndcg, 0) if improved else (best, stale + 1)
            metrics = {"epoch": epoch, "loss": stats.loss, "val_hr@10": hr, "val_ndcg@10": ndcg,
                       "tokens_per_s": float(sums[3]), "epoch_s": stats.seconds}
            report_epoch(config["label"], cfg.epochs, metrics, lambda: {"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                                                              "scheduler": scheduler.state_dict(),
                                                              "epoch": epoch, "best": best, "stale": stale, "live": live},
                         CHECKPOINT_FILE, show=("loss", "val_hr@10", "val_ndcg@10", "tokens_per_s", "epoch_s"))
        if stale >= cfg.patience or math.isnan(metrics["loss"]):
            break
