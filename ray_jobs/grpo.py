"""`dig grpo`: GRPO on the SFT model with the interest-aware reward (Ray Train)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import torch
from ray.train.torch import TorchTrainer

from actors.grpo_trainer import CHECKPOINT_FILE, load_policy, train_grpo
from actors.train_report import read_checkpoint
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.recommender.artifacts import load_catalog, load_format, load_meta, save_model, user_interests
from deepinterestgr.recommender.model import export_model
from deepinterestgr.recommender.sequences import validation_users
from deepinterestgr.storage.filesystem import pinned
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import scaling_config, stage_main, train_run_config, up_to_date

STAGE = "grpo"


def item_quality(store: RunStore, item_ids: list[str]) -> tuple[np.ndarray, str]:
    """q_i per catalog row from the label stage (RLDI), or zeros (the quality term then vanishes)."""
    if store.entry("label") is None:
        return np.zeros(len(item_ids)), "none (no label stage): the quality term is 0"
    table = store.read_table("label", "item_quality")
    q = dict(zip(table.column("item_id").to_pylist(), table.column("quality").to_pylist()))
    return np.array([float(q.get(i, 0.0)) for i in item_ids]), "label/item_quality"


@dataclass
class GRPOInputs:
    """What the GRPO workers get (`loop_config`) and what the driver keeps for saving and reporting."""

    loop_config: dict
    fmt: object
    policy: torch.nn.Module  # the untrained policy (`load_policy`), into which the best checkpoint is loaded
    quality_source: str


def grpo_inputs(cfg: RunConfig, store: RunStore) -> GRPOInputs:
    """Training prompts (history up to a target), their targets and q_target, validation users."""
    g = cfg.grpo
    catalog = load_catalog(store)
    fmt = load_format(store, "sft", catalog, cfg.sft.backbone)
    policy = load_policy(cfg, fmt.vocab)
    seqs, interests = catalog.sequences, user_interests(store)
    quality, quality_source = item_quality(store, catalog.item_ids)
    prompts, targets = [], []
    for u, rows in enumerate(seqs.train):
        for t in list(range(1, len(rows)))[-g.targets_per_user:]:
            prompts.append(fmt.prompt(rows[:t], interests.get(seqs.user_ids[u])))
            targets.append(rows[t])
    if len(prompts) < g.num_workers:
        raise DataError(f"grpo: {len(prompts)} training prompts for {g.num_workers} workers")
    valid = validation_users(seqs, cfg.sft.valid_users, cfg.seed)
    loop_config = {
        "run": pinned(cfg).model_dump(mode="json"), "log_level": cfg.ray.train_log_level, "sizes": catalog.trie.sizes,
        "vocab_offset": fmt.vocab.offset, "trie": catalog.trie_bytes, "codes": catalog.codes.tolist(),
        "pad_id": fmt.pad_id, "item_weight": fmt.item_weight, "prompts": prompts, "targets": targets, "quality": quality[targets].tolist(),
        "valid_prompts": [fmt.prompt(seqs.train[u], interests.get(seqs.user_ids[u])) for u in valid],
        "valid_targets": [int(seqs.valid[u]) for u in valid],
    }
    return GRPOInputs(loop_config, fmt, policy, quality_source)


def make_trainer(cfg: RunConfig, loop_config: dict, storage_path: str, fs) -> TorchTrainer:
    """GRPO on Ray Train; started again on the same storage path, it resumes from the latest checkpoint."""
    g = cfg.grpo
    return TorchTrainer(
        train_grpo,
        train_loop_config=loop_config,
        scaling_config=scaling_config(g),
        run_config=train_run_config(cfg, "grpo", storage_path, fs, "val_ndcg@10", "max", max_failures=cfg.grpo.max_failures),
    )


def run(cfg: RunConfig, store: RunStore) -> ManifestEntry:
    inputs = store.inputs(("prepare", "tokenize", "sft"), optional=("label", "mine"))
    config_hash = cfg.section_hash("grpo")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return entry
    g = cfg.grpo
    prepared = grpo_inputs(cfg, store)
    with store.stage(STAGE, config_hash, inputs) as attempt:
        result = make_trainer(cfg, prepared.loop_config, f"{attempt.dir}/ray_train", store.fs).fit()
        history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
        checkpoint, best = max(result.best_checkpoints, key=lambda pair: (pair[1]["val_ndcg@10"], -pair[1]["epoch"]))
        state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
        prepared.policy.load_state_dict(state["model"], strict=False)
        # One model, tuned from the sft model that serves (the distilled one where sft distilled its members).
        meta = replace(load_meta(store, "sft"), members=1, distilled=False)
        save_model(attempt, export_model(prepared.policy), meta, getattr(prepared.fmt, "tokenizer", None))
        trained = [h for h in history if h["epoch"] >= 0]
        report = {
            "backbone": cfg.sft.backbone, "prompts": len(prepared.loop_config["prompts"]),
            "valid_users": len(prepared.loop_config["valid_targets"]), "rollout": g.rollout, "group_size": g.group_size,
            "quality_source": prepared.quality_source,
            "sft_val_hr@10": history[0]["val_hr@10"], "sft_val_ndcg@10": history[0]["val_ndcg@10"],
            "best_epoch": best["epoch"], "val_hr@10": best["val_hr@10"], "val_ndcg@10": best["val_ndcg@10"],
            "kept": "sft weights (GRPO did not improve validation)" if best["epoch"] == -1 else "grpo weights",
            "s_per_step": float(np.mean([h["s_per_step"] for h in trained])) if trained else None,
            "history": history,
        }
        return attempt.commit({"prompts": len(prepared.loop_config["prompts"])}, report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
