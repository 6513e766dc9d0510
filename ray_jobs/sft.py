"""`dig sft`: SID sequences from the prepare and tokenize stages -> the generative recommender (Ray Train; one fit per `sft.members`)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import ray
import torch
from ray.train import DataConfig as TrainDataConfig
from ray.train.torch import TorchTrainer

from actors.rqvae_trainer import stack_embeddings
from actors.sft_trainer import CHECKPOINT_FILE, train_sft
from actors.train_report import read_checkpoint
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.recommender.artifacts import Catalog, item_texts, load_catalog, save_model, user_interests
from deepinterestgr.recommender.formats import Example, RecommenderMeta, make_format
from deepinterestgr.recommender.model import SPECIAL_TOKENS, build_model, content_rows, export_model
from deepinterestgr.recommender.sequences import validation_users
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from deepinterestgr.weights import resolve_llm
from ray_jobs.common import scaling_config, stage_main, train_run_config

STAGE = "sft"


def recommender_meta(cfg: RunConfig, sizes: list[int], items: int):
    """The metadata and tokenizer of the configured backbone, without loading its weights."""
    s = cfg.sft
    if s.backbone != "llm":
        return RecommenderMeta(s.backbone, list(sizes), SPECIAL_TOKENS, s.max_items, item_tokens=items if s.item_tokens else 0,
                               item_weight=s.ranking_item_weight, members=s.members), None
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_llm(s.llm.model)
    meta = RecommenderMeta("llm", list(sizes), AutoConfig.from_pretrained(path).vocab_size, s.max_items,
                           s.llm.template, s.llm.windows_per_user, members=s.members)
    return meta, AutoTokenizer.from_pretrained(path)


@dataclass
class SFTInputs:
    """What SFT trains and validates on, built from a run's prepare and tokenize stages (and mine, label)."""

    catalog: Catalog
    meta: RecommenderMeta
    tokenizer: object | None
    fmt: object  # the backbone's prompt format (formats.make_format)
    grouped: list[tuple[int, Example]]  # (group, example): a user's examples share their group
    user_examples: int
    interests: dict[str, str]
    valid_users: list[int]
    valid_prompts: list[list[int]]
    valid_targets: list[int]
    item_rows: np.ndarray | None  # the item tokens' start (sft.item_token_init=content), else None

    def rows(self) -> list[dict]:
        """The examples as dataset rows (`key` keeps their order across shards)."""
        return [{"key": k, "group": g, "ids": e.ids, "loss_start": e.loss_start, "read_only_from": e.read_only_from}
                for k, (g, e) in enumerate(self.grouped)]


def sft_inputs(cfg: RunConfig, store: RunStore) -> SFTInputs:
    """The SFT examples and validation users of a run, as the sft stage trains on them."""
    s = cfg.sft
    catalog = load_catalog(store)
    seqs = catalog.sequences
    meta, tokenizer = recommender_meta(cfg, catalog.trie.sizes, len(catalog.codes))
    fmt = make_format(meta, catalog.codes, tokenizer)
    interests = user_interests(store)
    # Each example's group is its user (item-alignment examples get a group each), for targets_per_user.
    grouped = [(u, e) for u, rows in enumerate(seqs.train) for e in fmt.user_examples(rows, interests.get(seqs.user_ids[u]))]
    user_examples = len(grouped)
    if s.backbone == "llm" and s.llm.item_tasks:
        grouped += [(-1 - k, e) for k, e in enumerate(fmt.item_examples(item_texts(store, catalog.item_ids)))]
    if not grouped:
        raise DataError("sft: no user has two training interactions, so there is nothing to learn from")
    valid = validation_users(seqs, s.valid_users, cfg.seed)
    # The config refuses item_token_init=content without item tokens.
    item_rows = content_rows(item_content_vectors(store, catalog.item_ids), s.hidden_size) if s.item_token_init == "content" else None
    return SFTInputs(catalog, meta, tokenizer, fmt, grouped, user_examples, interests, valid,
                     [fmt.prompt(seqs.train[u], interests.get(seqs.user_ids[u])) for u in valid],
                     [int(seqs.valid[u]) for u in valid], item_rows)


def item_content_vectors(store: RunStore, item_ids: list[str]) -> np.ndarray:
    """The vectors tokenize embedded per item (content channels, then the image's when present), in catalog order."""
    table = store.read_table("tokenize", "embeddings")
    ids, content, image = stack_embeddings([{c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}])
    if ids != list(item_ids):
        raise DataError("sft: tokenize's embeddings table does not hold the catalog's items; rerun `dig tokenize`")
    return (content if image is None else torch.cat([content, image], dim=1)).numpy()


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


def train_member(cfg: RunConfig, data: SFTInputs, train: ray.data.Dataset, storage_path: str, fs, member: int) -> TrainedMember:
    """One Ray Train fit with seed `cfg.seed + member`; returns its best validation epoch's weights."""
    s, catalog = cfg.sft, data.catalog
    seed = cfg.seed + member
    label = STAGE if s.members == 1 else f"{STAGE} member {member + 1}/{s.members}"
    trainer = TorchTrainer(
        train_sft,
        train_loop_config={
            "sft": s.model_dump(), "seed": seed, "label": label, "log_level": cfg.ray.train_log_level, "sizes": catalog.trie.sizes,
            "items": len(catalog.codes), "trie": catalog.trie_bytes, "pad_id": data.fmt.pad_id,
            "valid_prompts": data.valid_prompts, "valid_targets": data.valid_targets, "item_rows": data.item_rows,
        },
        scaling_config=scaling_config(s),
        datasets={"train": train},
        dataset_config=TrainDataConfig(datasets_to_split=[]),
        run_config=train_run_config(cfg, STAGE if member == 0 else f"{STAGE}_member{member}", storage_path, fs,
                                    "val_ndcg@10", "max", max_failures=cfg.sft.max_failures),
    )
    result = trainer.fit()
    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    checkpoint, best = max(result.best_checkpoints, key=lambda pair: (pair[1]["val_ndcg@10"], -pair[1]["epoch"]))
    state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
    model, _, _ = build_model(s, catalog.trie.sizes, seed, items=len(catalog.codes), item_rows=data.item_rows)
    model.load_state_dict(state["model"], strict=False)
    return TrainedMember(export_model(model), MemberValidation(best, history))


def run(cfg: RunConfig, store: RunStore) -> ManifestEntry:
    inputs = store.inputs(("prepare", "tokenize"), optional=("label", "mine"))
    config_hash = cfg.section_hash("sft")
    if store.is_fresh(STAGE, config_hash, inputs):
        print(f"sft: up to date in {store.uri}; skipped", file=sys.stderr)
        return store.require(STAGE)
    s = cfg.sft
    data = sft_inputs(cfg, store)
    seqs = data.catalog.sequences
    train = ray.data.from_items(data.rows()).materialize()
    # Resumable: a rerun after a crash keeps the members already saved, and Ray Train resumes the
    # member that was training from its latest epoch checkpoint in the same folder.
    with store.stage(STAGE, config_hash, inputs, resumable=True) as attempt:
        trained = []
        for member in range(s.members):
            record = attempt.read_text(member_record(member))
            if record is not None:
                print(f"sft: member {member + 1}/{s.members} was saved by an earlier attempt in {attempt.dir}; kept", file=sys.stderr)
                trained.append(MemberValidation(**json.loads(record)))
                continue
            fit = train_member(cfg, data, train, f"{attempt.dir}/ray_train", store.fs, member)
            save_model(attempt, fit.model, data.meta, data.tokenizer, member=member)
            # Written after the weights: its presence means the member is saved whole.
            attempt.write_atomic(member_record(member), json.dumps(asdict(fit.validation)).encode())
            trained.append(fit.validation)
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
            # The figures above are the first member's; the ensemble's are evaluate's.
            report["members"] = [{"seed": cfg.seed + k, "best_epoch": m.best["epoch"], "val_hr@10": m.best["val_hr@10"],
                                  "val_ndcg@10": m.best["val_ndcg@10"], "epochs_run": m.history[-1]["epoch"] + 1,
                                  "history": [{key: h[key] for key in ("epoch", "val_ndcg@10")} for h in m.history]}
                                 for k, m in enumerate(trained)]
        return attempt.commit({"examples": len(data.grouped), "members": s.members}, report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
