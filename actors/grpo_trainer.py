"""The Ray Train worker loop for GRPO (DDP): rollouts, interest-aware rewards, clipped updates, KL to SFT.

Every worker loads the SFT model (the policy) and a frozen copy (the reference) from the run's
storage, rolls out its own shard of prompts (rows rank::world, cut to equal length so that every
worker takes the same number of DDP steps), and validates its shard of validation users; hit counts
are summed across workers. Validation runs once before any update (epoch -1, the SFT model itself
is a checkpoint candidate) and after every epoch; training stops when validation NDCG@10 falls more
than `max_degradation` (relative) below the best so far.
"""

from __future__ import annotations

import time

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from actors.train_report import read_checkpoint, report_epoch, set_worker_log_level
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import load_meta, load_model
from deepinterestgr.recommender.backbones.base import backbone_of
from deepinterestgr.recommender.beam_search import beam_search
from deepinterestgr.recommender.decoding import completion_logprobs
from deepinterestgr.recommender.grpo import constrained_samples, group_advantages, grpo_loss
from deepinterestgr.recommender.model import trainable_state
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.recommender.reward import reward_terms
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.tokenizer.sids import SIDTrie

CHECKPOINT_FILE = "grpo.pt"
TERMS = ("hit", "valid", "prefix", "quality", "rank", "total")


def load_policy(cfg: RunConfig, vocab: SIDVocab):
    """The SFT model as the GRPO policy, readied by its backbone (e.g. fresh LoRA adapters); a model GRPO
    cannot tune (an ensemble of `sft.members`) is refused here, the one place that asks."""
    store = RunStore(cfg)
    model = load_model(store, "sft")
    if not backbone_of(model).tunable:
        raise DataError(f"grpo: the sft model in {store.uri} is an ensemble of {load_meta(store, 'sft').members} members (sft.members), and GRPO "
                        "tunes one model: rerun `dig sft` with sft.members=1 to tune it")
    return backbones.get(cfg.sft.backbone).policy(model, cfg.sft, vocab)


def _sum_across(values: list[float], world: int) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(tensor)
    return tensor


def train_grpo(config: dict) -> None:
    set_worker_log_level(config["log_level"])
    cfg = RunConfig.model_validate(config["run"])
    g = cfg.grpo
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    vocab = SIDVocab(tuple(config["sizes"]), config["vocab_offset"])
    trie, codes, pad_id = SIDTrie.from_bytes(config["trie"]), np.array(config["codes"]), config["pad_id"]
    per_worker = len(config["prompts"]) // world
    prompts = config["prompts"][rank::world][:per_worker]
    targets = np.array(config["targets"])[rank::world][:per_worker]
    quality = np.array(config["quality"])[rank::world][:per_worker]
    valid_prompts = config["valid_prompts"][rank::world]
    valid_targets = np.array(config["valid_targets"])[rank::world]

    policy = load_policy(cfg, vocab)
    reference = load_model(RunStore(cfg), "sft").requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=g.lr, weight_decay=0.0)
    start_epoch, best = -1, -1.0
    device = ray.train.torch.get_device()
    # Moved before a resumed optimizer state is loaded: loading casts that state to the weights' device.
    policy.to(device)
    reference.to(device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
        policy.load_state_dict(state["model"], strict=False)
        if state["optimizer"]:
            optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    ddp = ray.train.torch.prepare_model(policy, parallel_strategy="ddp" if world > 1 else None)
    # No dropout anywhere: the ratio of new to old log-probabilities must be 1 before the first update.
    ddp.eval()
    reference.eval()
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + rank)

    def validate() -> tuple[float, float]:
        ranks = target_ranks(policy, valid_prompts, valid_targets, trie, vocab, g.beam_width, pad_id=pad_id,
                             item_weight=config["item_weight"])
        local = ranking_metrics(ranks, (10,)) if len(ranks) else {"hr@10": 0.0, "ndcg@10": 0.0}
        sums = _sum_across([local["hr@10"] * len(ranks), local["ndcg@10"] * len(ranks), len(ranks)], world)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def report(epoch: int, metrics: dict) -> None:
        report_epoch("grpo", g.epochs, {"epoch": epoch, **metrics},
                     lambda: {"model": trainable_state(policy), "optimizer": optimizer.state_dict() if epoch >= 0 else None,
                              "epoch": epoch, "best": best},
                     CHECKPOINT_FILE, show=("reward_total", "reward_hit", "kl", "val_hr@10", "val_ndcg@10", "s_per_step"))

    if start_epoch == -1:
        hr, ndcg = validate()
        best = ndcg
        report(-1, {"val_hr@10": hr, "val_ndcg@10": ndcg, "steps": 0})
        start_epoch = 0

    for epoch in range(start_epoch, g.epochs):
        order = torch.randperm(per_worker, generator=torch.Generator().manual_seed(cfg.seed * 31 + epoch)).tolist()
        sums, steps, began = np.zeros(len(TERMS) + 3), 0, time.perf_counter()
        for start in range(0, per_worker, g.batch_size):
            batch = order[start : start + g.batch_size]
            batch_prompts = [prompts[i] for i in batch]
            with torch.no_grad():
                # Rollouts come from the SID policy alone (no item head): GRPO trains the SID distribution.
                if g.rollout == "beam":
                    rows = beam_search(policy, batch_prompts, trie, vocab, g.group_size, g.group_size, pad_id=pad_id).items
                else:
                    rows = constrained_samples(policy, batch_prompts, trie, vocab, g.group_size, g.temperature, generator, pad_id)
            terms = [reward_terms(r, int(targets[i]), codes, float(quality[i]), g) for r, i in zip(rows, batch)]
            rewards = torch.tensor(np.stack([t["total"] for t in terms]), dtype=torch.float32)
            advantages = group_advantages(rewards).view(-1).to(device)
            weights = torch.from_numpy((rows >= 0).reshape(-1).astype(np.float32)).to(device)
            completions = torch.from_numpy(vocab.encode(codes[np.maximum(rows, 0)]).reshape(-1, vocab.levels)).to(device)
            repeated = [p for p in batch_prompts for _ in range(g.group_size)]
            with torch.no_grad():
                old = completion_logprobs(policy, repeated, completions, pad_id)
                ref = completion_logprobs(reference, repeated, completions, pad_id)
            for _ in range(g.updates_per_rollout):
                logp = completion_logprobs(ddp, repeated, completions, pad_id)
                loss, stats = grpo_loss(logp, old, ref, advantages, weights, g.clip_eps, g.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
                optimizer.step()
            group_std = rewards.std(dim=1, unbiased=False).mean().item()
            sums += [*(float(np.mean([t[k] for t in terms])) for k in TERMS), stats.kl, stats.clip_fraction, group_std]
            steps += 1
        seconds = time.perf_counter() - began
        means = _sum_across(list(sums / max(steps, 1)), world) / world
        hr, ndcg = validate()
        degraded = ndcg < best * (1 - g.max_degradation)
        best = max(best, ndcg)
        metrics = {f"reward_{k}": float(means[i]) for i, k in enumerate(TERMS)}
        metrics.update({"kl": float(means[-3]), "clip_fraction": float(means[-2]), "group_reward_std": float(means[-1]),
                        "val_hr@10": hr, "val_ndcg@10": ndcg, "steps": steps, "s_per_step": seconds / max(steps, 1)})
        report(epoch, metrics)
        if degraded:
            break
