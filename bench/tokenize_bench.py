"""IEID benchmark on amazon-office (3,459 items, MiniLM embeddings): RQ-VAE on Ray Train with 1 and 2
workers, and residual k-means, in one run. Prints one JSON line.

    python bench/tokenize_bench.py [--data ../shared/data/amazon-office] [--epochs 300]

Embeddings are computed once (cached under --cache) so the tokenizers are timed alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from actors.embedders import TextEmbedder
from deepinterestgr.config import DataConfig, load_config
from deepinterestgr.data.registry import load_raw
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.tokenizer.rkmeans import residual_kmeans
from deepinterestgr.tokenizer.sids import collision_rate, level_stats
from ray_jobs.tokenize import train


def embeddings(data: str, cache: Path) -> tuple[list[str], np.ndarray]:
    items = load_raw(DataConfig(loader="jsonl", path=data), seed=0).items.sort_by("item_id")
    ids = items.column("item_id").to_pylist()
    if cache.exists():
        return ids, np.load(cache)
    embedder = TextEmbedder("all-MiniLM-L6-v2", batch_size=64)
    batch = {c: np.array(items.column(c).to_pylist(), dtype=object) for c in ("item_id", "title", "description")}
    vectors = embedder(batch)["text_embedding"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return ids, vectors


def stats(codes: np.ndarray, size: int) -> dict:
    return {
        "collision_rate": round(collision_rate(codes), 4),
        "utilisation": [round(s["utilisation"], 3) for s in level_stats(codes, [size] * codes.shape[1])],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/amazon-office")
    parser.add_argument("--cache", default="runs/bench/office_minilm.npy")
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()

    ids, vectors = embeddings(args.data, Path(args.cache))
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_arrow(pa.table({"item_id": ids, "text_embedding": list(vectors)}))
    out: dict = {"bench": "tokenize", "items": len(ids), "levels": 3, "codebook_size": 256}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as folder:
            cfg = load_config(None, [f"storage.uri={folder}", f"tokenize.rqvae.epochs={args.epochs}",
                                     f"tokenize.rqvae.num_workers={workers}"])
            start = time.perf_counter()
            model, info = train(cfg, RunStore(cfg), f"{RunStore(cfg).root}/bench", dataset)
            wall = time.perf_counter() - start
            codes = model.codes(torch.from_numpy(vectors)).numpy()
            out[f"rqvae_{workers}w"] = {"wall_s": round(wall, 1), "best_epoch": info["best_epoch"], **stats(codes, 256)}
    start = time.perf_counter()
    codes, _, _ = residual_kmeans(vectors, 3, 256, 20, seed=0)
    out["rkmeans"] = {"wall_s": round(time.perf_counter() - start, 1), **stats(codes, 256)}
    out["near_duplicate_items"] = round(float(_near_duplicates(vectors)), 4)
    print(json.dumps(out))


def _near_duplicates(vectors: np.ndarray, threshold: float = 1e-3) -> float:
    """Share of items whose nearest other item is closer than `threshold` (L2^2): a floor on collisions."""
    import faiss

    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    distances, _ = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 2)
    return (distances[:, 1] < threshold).mean()


if __name__ == "__main__":
    main()
