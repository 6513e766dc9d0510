"""`dig sft`: SID sequences from the prepare and tokenize stages -> the generative recommender (Ray Train)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import ray
import torch
from pyarrow import fs as pafs
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import DataConfig as TrainDataConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchTrainer

from actors.sft_trainer import CHECKPOINT_FILE, build_model, train_sft
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.recommender.model import SPECIAL_TOKENS
from deepinterestgr.recommender.sequences import UserSequences, build_sequences, tokens
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from deepinterestgr.tokenizer.sids import SIDTrie
from ray_jobs.common import stage_main

STAGE = "sft"


@dataclass
class Catalog:
    """What the recommender stages share: SIDs in catalog row order, the trie, the users' sequences."""

    item_ids: list[str]
    codes: np.ndarray
    trie: SIDTrie
    trie_bytes: bytes
    sequences: UserSequences
    vocab: SIDVocab


def load_catalog(store: RunStore) -> Catalog:
    sids = store.read_table("tokenize", "sids").sort_by("item_id")
    item_ids = sids.column("item_id").to_pylist()
    codes = np.array(sids.column("sid").to_pylist(), dtype=np.int64)
    trie_bytes = store.read_bytes("tokenize", "trie.npz")
    trie = SIDTrie.from_bytes(trie_bytes)
    if any(trie.lookup(code.tolist()) < 0 for code in codes[:10]):
        raise DataError("tokenize output is inconsistent: the trie misses SIDs from the sids table")
    sequences = build_sequences(store.read_table("prepare", "interactions"), {i: r for r, i in enumerate(item_ids)})
    return Catalog(item_ids, codes, trie, trie_bytes, sequences, SIDVocab(tuple(trie.sizes), SPECIAL_TOKENS))


def load_model(store: RunStore, stage: str = STAGE):
    """The committed model of a stage (sft or grpo), ready for inference."""
    from transformers import LlamaForCausalLM

    with tempfile.TemporaryDirectory() as folder:
        pafs.copy_files(f"{store.table_path(stage, 'model')}", folder, source_filesystem=store.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return LlamaForCausalLM.from_pretrained(folder).eval()


def check_vocabulary(store: RunStore, stage: str, catalog: Catalog) -> None:
    """The committed model must have been trained on this run's SID table."""
    vocab_size = json.loads(store.read_bytes(stage, "model/config.json"))["vocab_size"]
    if vocab_size != catalog.vocab.size:
        raise DataError(
            f"the {stage} model has {vocab_size} tokens but the SID table needs {catalog.vocab.size} "
            f"(levels {catalog.trie.sizes}): tokenize changed after training; rerun `dig {stage}`"
        )


def run(cfg: RunConfig, store: RunStore) -> ManifestEntry:
    inputs = {stage: store.require(stage).fingerprint for stage in ("prepare", "tokenize")}
    config_hash = cfg.section_hash("sft")
    if store.is_fresh(STAGE, config_hash, inputs):
        print(f"sft: up to date in {store.uri}; skipped", file=sys.stderr)
        return store.require(STAGE)
    s = cfg.sft
    catalog = load_catalog(store)
    seqs = catalog.sequences
    rows = [{"user": u, "tokens": tokens(train, catalog.codes, catalog.vocab, s.max_items)}
            for u, train in enumerate(seqs.train) if train]
    if not rows:
        raise DataError("sft: no user has a training interaction")
    valid = [u for u in range(len(seqs.user_ids)) if seqs.valid[u] >= 0]
    with store.stage(STAGE, config_hash, inputs) as attempt:
        trainer = TorchTrainer(
            train_sft,
            train_loop_config={
                "sft": s.model_dump(), "seed": cfg.seed, "sizes": catalog.trie.sizes, "trie": catalog.trie_bytes,
                "valid_prompts": [tokens(seqs.train[u], catalog.codes, catalog.vocab, s.max_items) for u in valid],
                "valid_targets": [int(seqs.valid[u]) for u in valid],
            },
            scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker}),
            datasets={"train": ray.data.from_items(rows).materialize()},
            dataset_config=TrainDataConfig(datasets_to_split=[]),
            run_config=TrainRunConfig(
                name="sft", storage_path=f"{attempt.dir}/ray_train", storage_filesystem=store.fs,
                checkpoint_config=CheckpointConfig(checkpoint_score_attribute="val_ndcg@10", checkpoint_score_order="max"),
                failure_config=FailureConfig(max_failures=2),
            ),
        )
        result = trainer.fit()
        history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
        checkpoint, best = max(result.best_checkpoints, key=lambda pair: (pair[1]["val_ndcg@10"], -pair[1]["epoch"]))
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=False)
        model, _ = build_model(s, catalog.trie.sizes, cfg.seed)
        model.load_state_dict(state["model"])
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            store.fs.create_dir(attempt.path("model"), recursive=True)
            pafs.copy_files(folder, attempt.path("model"), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=store.fs)
        report = {
            "backbone": s.backbone, "users": len(rows), "valid_users": len(valid), "unknown_items_skipped": seqs.unknown_items,
            "best_epoch": best["epoch"], "val_hr@10": best["val_hr@10"], "val_ndcg@10": best["val_ndcg@10"],
            "epochs_run": len(history), "tokens_per_s": float(np.mean([h["tokens_per_s"] for h in history])),
            "history": [{k: h[k] for k in ("epoch", "loss", "val_hr@10", "val_ndcg@10")} for h in history],
        }
        return attempt.commit({"users": len(rows)}, report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
