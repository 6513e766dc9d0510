"""`dig sft`: SID sequences from the prepare and tokenize stages -> the generative recommender (Ray Train; one fit per `sft.members`, one more for `sft.distill`)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import ray
import torch
from ray.train import DataConfig as TrainDataConfig
from ray.train.torch import TorchTrainer

from actors.sft_trainer import CHECKPOINT_FILE, train_sft
from actors.train_report import read_checkpoint
from deepinterestgr.config import RunConfig
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import STUDENT_FOLDER, load_saved_members, member_folder, save_model
from deepinterestgr.recommender.inputs import SFTInputs, sft_inputs
from deepinterestgr.recommender.model import export_model
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from ray_jobs.common import scaling_config, stage_main, train_run_config, up_to_date

STAGE = "sft"


@dataclass
class MemberValidation:
    """A member's best validation epoch's figures and its validation history."""

    best: dict
    history: list[dict]


@dataclass
class TrainedMember:
    """One member's best validation epoch's weights (exported) and how it validated."""

    model: torch.nn.Module
    validation: MemberValidation


def member_record(member: int) -> str:
    """The file in an sft attempt that marks a member as trained and saved, with its validation figures."""
    return f"trained_members/{member}.json"


STUDENT_RECORD = "trained_members/student.json"  # the same for the model distilled from the members


def train_member(cfg: RunConfig, data: SFTInputs, train: ray.data.Dataset, storage_path: str, fs, member: int,
                 teachers: list[torch.nn.Module] | None = None) -> TrainedMember:
    """One Ray Train fit with seed `cfg.seed + member`; returns its best validation epoch's weights. With
    `teachers` (the saved members), the model distilled from them (`sft.distill`), trained as member 0 is."""
    s, catalog = cfg.sft, data.catalog
    seed = cfg.seed + member
    if teachers:
        name, label = f"{STAGE}_student", f"{STAGE} distilled from {len(teachers)} members"
    else:
        name, label = f"{STAGE}_member{member}", STAGE if s.members == 1 else f"{STAGE} member {member + 1}/{s.members}"
    trainer = TorchTrainer(
        train_sft,
        train_loop_config={
            "sft": s.model_dump(), "seed": seed, "label": label, "log_level": cfg.ray.train_log_level, "sizes": catalog.trie.sizes,
            "items": len(catalog.codes), "trie": catalog.trie_bytes, "pad_id": data.fmt.pad_id,
            "valid_prompts": data.valid_prompts, "valid_targets": data.valid_targets, "item_rows": data.item_rows,
            "teachers": teachers,
        },
        scaling_config=scaling_config(s),
        datasets={"train": train},
        dataset_config=TrainDataConfig(datasets_to_split=[]),
        run_config=train_run_config(cfg, name, storage_path, fs, "val_ndcg@10", "max", max_failures=cfg.sft.max_failures),
    )
    result = trainer.fit()
    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    checkpoint, best = max(result.best_checkpoints, key=lambda pair: (pair[1]["val_ndcg@10"], -pair[1]["epoch"]))
    state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
    model, _, _ = backbones.get(s.backbone).build(s, catalog.trie.sizes, seed, items=len(catalog.codes), item_rows=data.item_rows)
    model.load_state_dict(state["model"], strict=False)
    return TrainedMember(export_model(model), MemberValidation(best, history))


@ray.remote(num_cpus=0)
def _train_member_task(cfg: RunConfig, data: SFTInputs, train: ray.data.Dataset, storage_path: str, fs, member: int,
                       teachers: list[torch.nn.Module] | None = None) -> TrainedMember:
    # A Ray task holds no CPU of its own: the fit's workers hold them, so `sft.concurrent_members` fits overlap.
    return train_member(cfg, data, train, storage_path, fs, member, teachers)


def _summary(seed: int, fit: MemberValidation) -> dict:
    return {"seed": seed, "best_epoch": fit.best["epoch"], "val_hr@10": fit.best["val_hr@10"], "val_ndcg@10": fit.best["val_ndcg@10"],
            "epochs_run": fit.history[-1]["epoch"] + 1, "history": [{key: h[key] for key in ("epoch", "val_ndcg@10")} for h in fit.history]}


def run(cfg: RunConfig, store: RunStore) -> ManifestEntry:
    inputs = store.inputs(("prepare", "tokenize"), optional=("label", "mine"))
    config_hash = cfg.section_hash("sft")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return entry
    s = cfg.sft
    data = sft_inputs(cfg, store)
    seqs = data.catalog.sequences
    train = ray.data.from_items(data.rows()).materialize()
    # Resumable: a rerun after a crash keeps the members already saved, and Ray Train resumes the
    # member that was training from its latest epoch checkpoint in the same folder.
    with store.stage(STAGE, config_hash, inputs, resumable=True) as attempt:
        saved: dict[int, MemberValidation] = {}
        waiting = []
        for member in range(s.members):
            record = attempt.read_text(member_record(member))
            if record is not None:
                print(f"sft: member {member + 1}/{s.members} was saved by an earlier attempt in {attempt.dir}; kept", file=sys.stderr)
                saved[member] = MemberValidation(**json.loads(record))
            else:
                waiting.append(member)
        running: dict[ray.ObjectRef, int] = {}
        shared = ray.put(data)
        while waiting or running:
            while waiting and len(running) < s.concurrent_members:
                member = waiting.pop(0)
                running[_train_member_task.remote(cfg, shared, train, f"{attempt.dir}/ray_train", store.fs, member)] = member
            done, _ = ray.wait(list(running))
            member = running.pop(done[0])
            fit = ray.get(done[0])
            save_model(attempt, fit.model, data.meta, data.tokenizer, folder=member_folder(member))
            # Written after the weights: its presence means the member is saved whole.
            attempt.write_atomic(member_record(member), json.dumps(asdict(fit.validation)).encode())
            saved[member] = fit.validation
        trained = [saved[member] for member in range(s.members)]
        student = None
        if s.distill:
            record = attempt.read_text(STUDENT_RECORD)
            if record is not None:
                print(f"sft: the distilled model was saved by an earlier attempt in {attempt.dir}; kept", file=sys.stderr)
                student = MemberValidation(**json.loads(record))
            else:
                # The teachers travel with the fit's config: read back as saved, the weights that rank as the ensemble.
                teachers = load_saved_members(attempt, s.backbone, s.members)
                fit = ray.get(_train_member_task.remote(cfg, shared, train, f"{attempt.dir}/ray_train", store.fs, 0, teachers))
                save_model(attempt, fit.model, data.meta, data.tokenizer, folder=STUDENT_FOLDER)
                attempt.write_atomic(STUDENT_RECORD, json.dumps(asdict(fit.validation)).encode())
                student = fit.validation
        first = trained[0]
        report = {
            "backbone": s.backbone, "users": sum(1 for t in seqs.train if t), "valid_users": len(data.valid_users),
            "examples": len(data.grouped), "user_examples": data.user_examples, "users_with_interests": len(data.interests),
            "unknown_items_skipped": seqs.unknown_items,
            "best_epoch": first.best["epoch"], "val_hr@10": first.best["val_hr@10"], "val_ndcg@10": first.best["val_ndcg@10"],
            "epochs_run": first.history[-1]["epoch"] + 1,
            "tokens_per_s": float(np.mean([h["tokens_per_s"] for h in first.history])),
            "history": [{k: h[k] for k in ("epoch", "loss", "val_hr@10", "val_ndcg@10")} for h in first.history],
        }
        if s.members > 1:
            # The figures above are the first member's; the ensemble's (and the distilled model's) are evaluate's.
            report["members"] = [_summary(cfg.seed + k, m) for k, m in enumerate(trained)]
        if student is not None:
            report["distilled"] = {**_summary(cfg.seed, student), "distill": s.distill}
        return attempt.commit({"examples": len(data.grouped), "members": s.members}, report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
