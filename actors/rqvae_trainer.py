"""The Ray Train worker loop for the RQ-VAE (TorchTrainer; DDP over gloo on CPU, nccl on GPU).

Every worker receives the whole (small) embedding dataset unsplit, sorts it by item_id and trains on
its own rows (row % world_size == rank): the shards are then the same in every run, which keeps
training deterministic for a seed, and every worker can measure collisions over the full catalog.
"""

from __future__ import annotations

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from actors.train_report import read_checkpoint, report_epoch, set_worker_log_level
from deepinterestgr.config import RQVAEConfig
from deepinterestgr.tokenizer.embeddings import stack_embeddings
from deepinterestgr.tokenizer.rqvae import RQVAE
from deepinterestgr.tokenizer.sids import collision_rate, level_stats

CHECKPOINT_FILE = "rqvae.pt"


def collect_embeddings(shard) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """`stack_embeddings` over a Ray Data iterator (a worker's dataset shard)."""
    return stack_embeddings(shard.iter_batches(batch_size=4096, batch_format="numpy"))


def train_rqvae(config: dict) -> None:
    """Train one RQ-VAE replica; report metrics each `eval_every` epochs with a checkpoint (rank 0)."""
    set_worker_log_level(config["log_level"])
    cfg = RQVAEConfig(**config["rqvae"])
    seed = config["seed"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(seed)
    _, text, image = collect_embeddings(ray.train.get_dataset_shard("train"))
    model = RQVAE(text.shape[1], None if image is None else image.shape[1], cfg, config["image_projection_dim"])

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = read_checkpoint(checkpoint, CHECKPOINT_FILE)
        model.load_state_dict(state["model"])
        start_epoch = state["epoch"] + 1
    else:
        model.fit_input_stats(text, image)
        if cfg.start_collapsed:
            with torch.no_grad():
                model.quantizer.codebooks.copy_(model.quantizer.codebooks[:, :1].expand_as(model.quantizer.codebooks))
        elif cfg.kmeans_init:
            model.init_codebooks(text, image, cfg.kmeans_iters, seed)

    device = ray.train.torch.get_device()
    model.to(device)
    ddp = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=cfg.lr)
    if checkpoint:
        optimizer.load_state_dict(state["optimizer"])

    own = torch.arange(rank, len(text), world)
    reseeded = 0
    for epoch in range(start_epoch, cfg.epochs):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch * 101 + rank)
        order = own[torch.randperm(len(own), generator=generator)]
        ddp.train()
        totals = {"loss": 0.0, "recon": 0.0, "quant": 0.0}
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            out = ddp(text[rows].to(device), None if image is None else image[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            for key in totals:
                totals[key] += float(out[key].detach()) * len(rows) / len(order)

        last = epoch == cfg.epochs - 1
        if (epoch + 1) % cfg.eval_every and not last:
            continue
        model.eval()
        codes = model.codes(text.to(device), None if image is None else image.to(device)).cpu().numpy()
        stats = level_stats(codes, [cfg.codebook_size] * cfg.levels)
        metrics = {
            "epoch": epoch,
            **totals,
            "collision_rate": collision_rate(codes),
            "reseeded_codes": reseeded,
            **{f"utilisation_l{i}": s["utilisation"] for i, s in enumerate(stats)},
            **{f"perplexity_l{i}": s["perplexity"] for i, s in enumerate(stats)},
        }
        report_epoch("rqvae", cfg.epochs, metrics, lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                     CHECKPOINT_FILE, show=("loss", "recon", "collision_rate", "utilisation_l0", "reseeded_codes"))
        if not last:
            generator = torch.Generator().manual_seed(seed + epoch)
            reseeded = model.reseed_dead_codes(text.to(device), None if image is None else image.to(device), cfg.dead_code_min_count, generator)
            if world > 1:
                dist.broadcast(model.quantizer.codebooks.data, src=0)
