"""A run's recommender artifacts in its storage: the SID catalog, users' sequences, trained model folders.

The sft, grpo and evaluate stages and the server all read them through these functions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
from pyarrow import fs as pafs

from deepinterestgr.errors import DataError
from deepinterestgr.interests.labels import good_descriptors
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.ensemble import Ensemble
from deepinterestgr.recommender.formats import META_FILE, ItemText, RecommenderMeta
from deepinterestgr.recommender.sequences import UserSequences, build_sequences
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.tokenizer.sids import SIDTrie


@dataclass
class Catalog:
    """What the recommender stages share: SIDs in catalog row order, the trie, the users' sequences."""

    item_ids: list[str]
    codes: np.ndarray
    trie: SIDTrie
    trie_bytes: bytes
    sequences: UserSequences


def load_catalog(store: RunStore) -> Catalog:
    """SIDs (rows sorted by item id), the trie and the split interactions of a tokenized run."""
    sids = store.read_table("tokenize", "sids").sort_by("item_id")
    item_ids = sids.column("item_id").to_pylist()
    codes = np.array(sids.column("sid").to_pylist(), dtype=np.int64)
    trie_bytes = store.read_bytes("tokenize", "trie.npz")
    trie = SIDTrie.from_bytes(trie_bytes)
    if any(trie.lookup(code.tolist()) < 0 for code in codes[:10]):
        raise DataError("tokenize output is inconsistent: the trie misses SIDs from the sids table")
    sequences = build_sequences(store.read_table("prepare", "interactions"), item_ids)
    return Catalog(item_ids, codes, trie, trie_bytes, sequences)


def item_texts(store: RunStore, item_ids: list[str]) -> list[ItemText]:
    """Title and the descriptors that count (`good_descriptors`) per catalog row (descriptors once mining has run)."""
    source = next(stage for stage in ("label", "mine", "prepare") if store.entry(stage) is not None)
    table = store.read_table(source, "items")
    rows = {item: row for row, item in enumerate(item_ids)}
    described = "descriptors" in table.column_names
    out = []
    for record in table.to_pylist():
        row = rows.get(record["item_id"])
        if row is None:
            continue
        descriptors = good_descriptors(record) if described else []
        out.append(ItemText(row, record.get("title") or "", descriptors))
    return sorted(out, key=lambda item: item.row)


def user_interests(store: RunStore) -> dict[str, str]:
    """Mined interests per user id, one text each (empty before the mine stage has run)."""
    if store.entry("mine") is None:
        return {}
    table = store.read_table("mine", "user_interests")
    return dict(zip(table.column("user_id").to_pylist(), table.column("interests").to_pylist()))


def member_folder(member: int) -> str:
    """Where member k of a stage's model is kept, relative to the stage (`sft.members`; also for one member)."""
    return f"model/members/{member}"


STUDENT_FOLDER = "model/student"
"""Where a stage keeps the model distilled from its members (`sft.distill`), which serves in their place."""


def _stored_member(store: RunStore, stage: str, member: int) -> str:
    folder = member_folder(member)
    if member == 0 and not store.fs.get_file_info(store.table_path(stage, f"{folder}/config.json")).is_file:
        return "model"  # runs before 2026-12 kept member 0 in the model folder itself
    return folder


def _copy_folder(fs: pafs.FileSystem, source: str, folder: str, weights: bool) -> None:
    for info in fs.get_file_info(pafs.FileSelector(source, recursive=False)):
        if info.type == pafs.FileType.Directory:
            continue
        if weights or not info.base_name.endswith((".safetensors", ".bin")):
            pafs.copy_files(info.path, f"{folder}/{info.base_name}", source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())


def _load_folder(fs: pafs.FileSystem, source: str, backbone):
    with tempfile.TemporaryDirectory() as folder:
        _copy_folder(fs, source, folder, weights=True)
        return backbone.load(folder)


def load_meta(store: RunStore, stage: str) -> RecommenderMeta:
    """How the stage's model builds prompts; a model folder without it predates this format."""
    try:
        return RecommenderMeta.from_json(store.read_bytes(stage, f"model/{META_FILE}"))
    except FileNotFoundError:
        raise DataError(f"the {stage} model in {store.uri} has no {META_FILE} (trained by an older version): "
                        f"rerun `dig {stage}`") from None


def load_model(store: RunStore, stage: str, members: bool = False):
    """The committed model of a stage (sft or grpo), ready for inference: the one that serves. That is the
    model distilled from the members when the stage has one (`sft.distill`), else an `Ensemble` when it has
    members, else its one model. `members=True`: the members (an `Ensemble`) even where a distilled model serves."""
    meta = load_meta(store, stage)
    backbone = backbones.get(meta.backbone)
    if meta.distilled and not members:
        return _load_folder(store.fs, store.table_path(stage, STUDENT_FOLDER), backbone)
    models = [_load_folder(store.fs, store.table_path(stage, _stored_member(store, stage, k)), backbone) for k in range(meta.members)]
    return models[0] if len(models) == 1 else Ensemble(models).eval()


def load_saved_members(attempt, backbone: str, count: int) -> list:
    """Members 0 .. count - 1 as a stage attempt (still open) saved them: the teachers of `sft.distill`."""
    return [_load_folder(attempt.store.fs, attempt.path(member_folder(k)), backbones.get(backbone)) for k in range(count)]


def load_format(store: RunStore, stage: str, catalog: Catalog, backbone: str | None = None):
    """The prompt format the stage's model was trained with (its tokenizer travels in the model folder).

    With `backbone` (the configured `sft.backbone`), a model trained with another backbone is refused.
    """
    meta = check_vocabulary(store, stage, catalog, backbone)
    model_backbone = backbones.get(meta.backbone)
    with tempfile.TemporaryDirectory() as folder:
        _copy_folder(store.fs, store.table_path(stage, _stored_member(store, stage, 0)), folder, weights=False)
        tokenizer = model_backbone.load_tokenizer(folder)
    return model_backbone.format(meta, catalog.codes, tokenizer)


def check_vocabulary(store: RunStore, stage: str, catalog: Catalog, backbone: str | None = None) -> RecommenderMeta:
    """The committed model must have been trained on this run's SID table (and backbone); returns its metadata."""
    meta = load_meta(store, stage)
    if list(meta.sizes) != list(catalog.trie.sizes):
        raise DataError(
            f"the {stage} model was trained on SID levels {meta.sizes} but the SID table has {catalog.trie.sizes}: "
            f"tokenize changed after training; rerun `dig sft`{' and `dig grpo`' if stage == 'grpo' else ''}"
        )
    if meta.item_tokens and meta.item_tokens != len(catalog.codes):
        raise DataError(f"the {stage} model was trained with item tokens for {meta.item_tokens} items but the SID table has "
                        f"{len(catalog.codes)}: tokenize changed after training; rerun `dig sft`{' and `dig grpo`' if stage == 'grpo' else ''}")
    if backbone is not None and meta.backbone != backbone:
        raise DataError(f"the {stage} model in {store.uri} was trained with backbone {meta.backbone} but sft.backbone is "
                        f"{backbone}: rerun `dig sft` (then `dig grpo`) with this config")
    return meta


def save_model(attempt, model, meta: RecommenderMeta, tokenizer=None, folder: str = member_folder(0)) -> None:
    """Write one model (weights, config, tokenizer) into `folder` of a stage attempt (`member_folder(k)`, or
    `STUDENT_FOLDER`), and the stage's recommender.json beside its models."""
    attempt.write_bytes(f"model/{META_FILE}", meta.to_json())
    with tempfile.TemporaryDirectory() as local:
        model.save_pretrained(local)
        if tokenizer is not None:
            tokenizer.save_pretrained(local)
        target = attempt.path(folder)
        attempt.store.fs.create_dir(target, recursive=True)
        pafs.copy_files(local, target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=attempt.store.fs)
