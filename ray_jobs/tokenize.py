"""`dig tokenize`: item embeddings (Ray Data actor pool) -> RQ-VAE (Ray Train) -> unique SIDs + trie."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.train import DataConfig as TrainDataConfig
from ray.train.torch import TorchTrainer

from actors.embedders import ImageEmbedder, TextEmbedder
from actors.rqvae_trainer import CHECKPOINT_FILE, train_rqvae
from actors.train_report import read_checkpoint
from deepinterestgr.config import RunConfig
from deepinterestgr.errors import DataError
from deepinterestgr.storage.result_cache import ResultCache, stable_hash
from deepinterestgr.storage.runstore import ManifestEntry, RunStore
from deepinterestgr.tokenizer.collaborative import cooccurrence_vectors, match_scale, sasrec_vectors, training_sequences
from deepinterestgr.tokenizer.report import sid_report, utilisation_png
from deepinterestgr.tokenizer.rkmeans import residual_kmeans
from deepinterestgr.tokenizer.embeddings import stack_embeddings
from deepinterestgr.tokenizer.rqvae import RQVAE
from deepinterestgr.tokenizer.sids import SIDTrie, add_extra_level, load_external_sids, reassign_last_level
from deepinterestgr.tokenizer.text import interest_channel
from ray_jobs.common import accelerator, collect, scaling_config, stage_main, train_run_config, up_to_date

STAGE = "tokenize"
UPSTREAM = ("prepare", "mine", "label")
EMBEDDING_COLUMNS = ("item_id", "text_embedding", "interest_embedding", "cf_embedding", "image_embedding")


@dataclass
class Tokenized:
    entry: ManifestEntry
    sids: pa.Table
    trie: SIDTrie


def embedding_cache(cfg: RunConfig, store: RunStore) -> ResultCache:
    """Text vectors by item id and text hash, kept across attempts: a rerun encodes only new or changed items."""
    return ResultCache(store, STAGE, f"text-{stable_hash(cfg.tokenize.text_encoder)}")


def known_embeddings(cfg: RunConfig, store: RunStore) -> dict[str, tuple[str, list[float]]]:
    """The embedding cache as item id -> (text hash, vector)."""
    return {row["id"]: (row["request_hash"], json.loads(row["value"])) for row in embedding_cache(cfg, store).load().values()}


def remember_embeddings(cfg: RunConfig, store: RunStore, table: pa.Table, known: dict[str, tuple[str, list[float]]]) -> None:
    """Add the vectors of items not in the embedding cache (or whose text changed) to it."""
    ids, hashes = table.column("item_id").to_pylist(), table.column("text_hash").to_pylist()
    vectors = np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False)).tolist()
    embedding_cache(cfg, store).append([
        {"id": i, "request_hash": h, "value": json.dumps(v), "raw": "", "prompt_tokens": 0, "completion_tokens": 0}
        for i, h, v in zip(ids, hashes, vectors) if known.get(i, ("",))[0] != h])


def embed(cfg: RunConfig, store: RunStore, items: ray.data.Dataset,
          known: dict[str, tuple[str, list[float]]] | None = None) -> ray.data.Dataset:
    """Add text (and, when configured, image) embeddings with actor pools that keep the encoders loaded (lazy);
    with `interest_channel` and mined items, also `interest_embedding`: the descriptors' own vectors.

    `items` should be materialised: the encoder actors start eagerly and may hold every CPU of a small
    machine, which would leave none for the read tasks that feed them.
    """
    t = cfg.tokenize
    pool = ray.data.ActorPoolStrategy(size=t.embed_actors)
    device = accelerator(t.embed_num_gpus)
    interests = t.interest_channel and "descriptors" in items.columns()
    data = items.map_batches(
        TextEmbedder, fn_constructor_kwargs={"model": t.text_encoder, "batch_size": t.embed_batch_size, "known": known, "device": device,
                                             "interests": interests, "interest_weights": t.interest_weights},
        batch_size=t.embed_batch_size, compute=pool, num_gpus=t.embed_num_gpus,
    )
    if t.image_encoder:
        data = data.map_batches(
            ImageEmbedder, fn_constructor_kwargs={"model": t.image_encoder, "filesystem": store.fs, "device": device},
            batch_size=t.embed_batch_size, compute=ray.data.ActorPoolStrategy(size=t.embed_actors), num_gpus=t.embed_num_gpus,
        )
    return data


def check_embeddings(table: pa.Table) -> None:
    """Empty catalogs, duplicate ids and non-finite vectors stop the stage, naming items."""
    if table.num_rows == 0:
        raise DataError("tokenize: the catalog has no items")
    ids = table.column("item_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids)
        raise DataError(f"tokenize: duplicate item ids {[c['values'] for c in counts.to_pylist() if c['counts'] > 1][:5]}")
    for column in ("text_embedding", "interest_embedding", "image_embedding"):
        if column not in table.column_names:
            continue
        rows = table.column(column).to_numpy(zero_copy_only=False)
        lengths = np.array([len(v) for v in rows])
        expected = np.bincount(lengths).argmax()
        if (lengths != expected).any():
            wrong = [ids[i].as_py() for i in np.flatnonzero(lengths != expected)[:5]]
            raise DataError(f"tokenize: {column} has the wrong dimension (not {expected}) for items {wrong}")
        vectors = np.stack(rows)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):
            raise DataError(f"tokenize: {column} is NaN or infinite for items {[ids[i].as_py() for i in bad[:5]]}")


def fill_interests(table: pa.Table) -> pa.Table:
    """`interest_embedding` as the RQ-VAE reads it (`interest_channel`), or dropped when no item has descriptors."""
    if "interest_embedding" not in table.column_names:
        return table
    text = np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False))
    interests = np.stack(table.column("interest_embedding").to_numpy(zero_copy_only=False))
    channel = interest_channel(text, interests)
    index = table.column_names.index("interest_embedding")
    if channel is None:
        return table.remove_column(index)
    return table.set_column(index, "interest_embedding", pa.array(list(channel), pa.list_(pa.float32())))


def add_collaborative(cfg: RunConfig, store: RunStore, table: pa.Table) -> pa.Table:
    """Append `cf_embedding`: collaborative vectors from training interactions, on the text embeddings' scale."""
    c = cfg.tokenize.collaborative
    ids = table.column("item_id").to_pylist()
    sequences = training_sequences(store.read_table("prepare", "interactions"), ids)
    if c.source == "sasrec":
        vectors = sasrec_vectors(sequences, len(ids), c.sasrec, cfg.seed)
    else:
        vectors = cooccurrence_vectors(sequences, len(ids), c.dim, c.window, cfg.seed)
    text = np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False))
    vectors = match_scale(vectors, text)
    return table.append_column("cf_embedding", pa.array(list(vectors), pa.list_(pa.float32())))


def train(cfg: RunConfig, store: RunStore, attempt_dir: str, embeddings: ray.data.Dataset) -> tuple[RQVAE, dict]:
    """Fit the RQ-VAE with Ray Train; return the checkpoint with the lowest collision rate."""
    r = cfg.tokenize.rqvae
    columns = [c for c in EMBEDDING_COLUMNS if c in embeddings.columns()]
    trainer = TorchTrainer(
        train_rqvae,
        train_loop_config={"rqvae": r.model_dump(), "seed": cfg.seed, "log_level": cfg.ray.train_log_level, "image_projection_dim": cfg.tokenize.image_projection_dim},
        scaling_config=scaling_config(r),
        # Materialised so that iterating it needs no CPU tasks while the workers hold every core.
        datasets={"train": embeddings.select_columns(columns).materialize()},
        dataset_config=TrainDataConfig(datasets_to_split=[]),
        # Every evaluation keeps its (small) checkpoint: the metrics history is read from them.
        run_config=train_run_config(cfg, "rqvae", f"{attempt_dir}/ray_train", store.fs, "collision_rate", "min",
                                    max_failures=cfg.tokenize.rqvae.max_failures),
    )
    result = trainer.fit()
    checkpoint, metrics = min(result.best_checkpoints, key=lambda pair: (pair[1]["collision_rate"], -pair[1]["epoch"]))
    state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
    has_image = "image_embedding" in columns
    text_dim = state["model"]["encoder.0.weight"].shape[1]
    image_dim = state["model"]["w_v.weight"].shape[1] if has_image else None
    model = RQVAE(text_dim, image_dim, r, cfg.tokenize.image_projection_dim)
    model.load_state_dict(state["model"])
    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    return model.eval(), {"best_epoch": metrics["epoch"], "history": history}


def assign_codes(
    cfg: RunConfig, store: RunStore, attempt_dir: str, embeddings: ray.data.Dataset, table: pa.Table
) -> tuple[list[str], np.ndarray, np.ndarray, list[int], dict, bytes | None]:
    """(item ids, raw codes, last-level distances, level sizes, training info, model bytes) by method.

    `table` is `embeddings` already collected on the driver; the dataset itself goes to Ray Train.
    """
    t, r = cfg.tokenize, cfg.tokenize.rqvae
    columns = [c for c in EMBEDDING_COLUMNS if c in table.column_names]
    ids, text, image = stack_embeddings([{c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}])
    if t.method == "external":
        codes = load_external_sids(t.external_path, ids)
        return ids, codes, None, [int(codes[:, level].max()) + 1 for level in range(codes.shape[1])], {}, None
    sizes = [r.codebook_size] * r.levels
    if t.method == "rkmeans":
        codes, centroids, last_residual = residual_kmeans(text.numpy(), r.levels, r.codebook_size, r.kmeans_iters, cfg.seed)
        distances = torch.cdist(torch.from_numpy(last_residual), torch.from_numpy(centroids[-1])).numpy()
        return ids, codes, distances, sizes, {}, None
    model, info = train(cfg, store, attempt_dir, embeddings)
    with torch.no_grad():
        z = model.encode(text, image)
        codes, inputs = model.quantizer.residuals(z)
        distances = torch.cdist(inputs[-1], model.quantizer.codebooks[-1]).numpy()
        info["reconstruction_mse"] = float(model(text, image)["recon"])
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "config": r.model_dump(), "text_dim": text.shape[1]}, buffer)
    return ids, codes.numpy(), distances, sizes, info, buffer.getvalue()


def _load(store: RunStore, entry: ManifestEntry) -> Tokenized:
    return Tokenized(entry, store.read_table(STAGE, "sids"), SIDTrie.from_bytes(store.read_bytes(STAGE, "trie.npz")))


def run(cfg: RunConfig, store: RunStore, items: ray.data.Dataset | None = None) -> Tokenized:
    """Embed, tokenize, disambiguate and commit; skipped when inputs and config are unchanged."""
    inputs = {stage: e.fingerprint for stage in UPSTREAM if (e := store.entry(stage)) is not None}
    if "prepare" not in inputs:
        store.require("prepare")
    config_hash = cfg.section_hash("tokenize")
    if (entry := up_to_date(store, STAGE, config_hash, inputs)) is not None:
        return _load(store, entry)
    if items is None:
        source = next(stage for stage in ("label", "mine", "prepare") if stage in inputs)
        items = ray.data.read_parquet(store.table_path(source, "items"), filesystem=store.fs)

    with store.stage(STAGE, config_hash, inputs) as attempt:
        known = known_embeddings(cfg, store)
        items = items.materialize()  # read once: counted here, embedded below
        count = items.count()
        # Before the embedding pass, which takes minutes on a real catalog.
        codes = cfg.tokenize.rqvae.codebook_size
        if cfg.tokenize.method != "external" and count < codes:
            raise DataError(f"tokenize: {count} items are fewer than rqvae.codebook_size={codes} codes")
        table = collect(embed(cfg, store, items, known), "tokenize: embed", "items", count)
        check_embeddings(table)
        remember_embeddings(cfg, store, table, known)
        table = fill_interests(table)
        if cfg.tokenize.collaborative.enabled:
            table = add_collaborative(cfg, store, table)
        # The RQ-VAE trainers read the collected table back through the object store.
        embeddings = ray.data.from_arrow(table)
        ids, raw, distances, sizes, info, model_bytes = assign_codes(cfg, store, attempt.dir, embeddings, table)
        if cfg.tokenize.disambiguation == "reassign" and distances is not None:
            final = reassign_last_level(raw, distances)
        else:
            final = add_extra_level(raw) if len(np.unique(raw, axis=0)) < len(raw) else raw
        extra = [int(final[:, -1].max()) + 1] if final.shape[1] > len(sizes) else []
        trie = SIDTrie.build(final, sizes + extra)
        report = {"method": cfg.tokenize.method, "disambiguation": cfg.tokenize.disambiguation, **sid_report(raw, final, sizes)}
        report.update({k: v for k, v in info.items() if k != "history"})
        if "image_ok" in table.column_names:
            report["images_unreadable"] = int(table.num_rows - pc.sum(table.column("image_ok")).as_py())

        sids = pa.table({"item_id": ids, "sid": pa.array(final.tolist(), pa.list_(pa.int64()))})
        attempt.write_table("sids", sids)
        keep = [c for c in EMBEDDING_COLUMNS if c in table.column_names]
        attempt.write_table("embeddings", table.select(keep).sort_by("item_id"))
        attempt.write_bytes("trie.npz", trie.to_bytes())
        if model_bytes:
            attempt.write_bytes("rqvae.pt", model_bytes)
        attempt.write_bytes("history.json", json.dumps(info.get("history", []), default=str).encode())
        attempt.write_bytes("utilisation.png", utilisation_png(report, cfg.tokenize.method))
        entry = attempt.commit({"sids": sids.num_rows}, report)
    return Tokenized(entry, sids, trie)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, run, argv)


if __name__ == "__main__":
    sys.exit(main())
