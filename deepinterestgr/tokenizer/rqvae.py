"""The RQ-VAE: optional image fusion, MLP encoder, residual quantizer, MLP decoder.

Fusion follows the paper, e = W_f [e_text ; W_v e_img]. The decoder reconstructs the raw
[e_text ; e_img] rather than e, so the trained fusion cannot shrink e to make reconstruction trivial.
"""

from __future__ import annotations

import logging

# faiss logs each CPU-specific build it tries at INFO: one line per build, in every worker.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepinterestgr.config import RQVAEConfig


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """k-means centroids with faiss (deterministic for a seed on one thread)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"{len(x)} items cannot initialise {k} codes: lower rqvae.codebook_size below the item count")
    model = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False, spherical=False)
    model.train(x)
    return model.centroids


class ResidualQuantizer(nn.Module):
    """L codebooks of K vectors; each level quantizes what the previous levels left over."""

    def __init__(self, levels: int, codebook_size: int, dim: int, commitment: float):
        super().__init__()
        self.commitment = commitment
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.1)

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    def residuals(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Codes [N, L] and the residual entering each level."""
        residual, codes, inputs = z, [], []
        for level in range(self.levels):
            inputs.append(residual)
            index = torch.cdist(residual, self.codebooks[level]).argmin(dim=1)
            codes.append(index)
            residual = residual - self.codebooks[level][index]
        return torch.stack(codes, dim=1), inputs

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantized z, codes [N, L], codebook + commitment loss)."""
        residual, quantized, loss, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for level in range(self.levels):
            index = torch.cdist(residual.detach(), self.codebooks[level]).argmin(dim=1)
            chosen = self.codebooks[level][index]
            loss = loss + F.mse_loss(chosen, residual.detach()) + self.commitment * F.mse_loss(residual, chosen.detach())
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(index)
        return z + (quantized - z).detach(), torch.stack(codes, dim=1), loss


class RQVAE(nn.Module):
    """Fusion (optional) -> encoder -> residual quantizer -> decoder."""

    def __init__(self, text_dim: int, image_dim: int | None, cfg: RQVAEConfig, image_projection_dim: int = 64):
        super().__init__()
        self.text_dim, self.image_dim = text_dim, image_dim
        if image_dim:
            self.w_v = nn.Linear(image_dim, image_projection_dim)
            self.w_f = nn.Linear(text_dim + image_projection_dim, text_dim)
        self.encoder = _mlp([text_dim, *cfg.hidden_dims, cfg.code_dim])
        self.quantizer = ResidualQuantizer(cfg.levels, cfg.codebook_size, cfg.code_dim, cfg.commitment)
        self.decoder = _mlp([cfg.code_dim, *reversed(cfg.hidden_dims), text_dim + (image_dim or 0)])
        # Per-dimension standardisation of the inputs. Sentence embeddings are unit vectors whose
        # coordinates are ~1/sqrt(d): unscaled, the reconstruction term is too weak to stop the
        # encoder from shrinking to one point and collapsing the codebooks.
        full = text_dim + (image_dim or 0)
        self.register_buffer("input_mean", torch.zeros(full))
        self.register_buffer("input_std", torch.ones(full))

    @torch.no_grad()
    def fit_input_stats(self, text: torch.Tensor, image: torch.Tensor | None = None) -> None:
        full = self._join(text, image)
        self.input_mean.copy_(full.mean(dim=0))
        self.input_std.copy_(full.std(dim=0).clamp_min(1e-6))

    def _join(self, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return text if not self.image_dim else torch.cat([text, image], dim=1)

    def target(self, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return (self._join(text, image) - self.input_mean) / self.input_std

    def encode(self, text: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if self.image_dim and image is None:
            raise ValueError("this RQ-VAE was built with an image encoder: pass image embeddings")
        joined = self.target(text, image)
        text = joined[:, : self.text_dim]
        if self.image_dim:
            text = self.w_f(torch.cat([text, self.w_v(joined[:, self.text_dim :])], dim=1))
        return self.encoder(text)

    def forward(self, text: torch.Tensor, image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        z = self.encode(text, image)
        quantized, codes, quant_loss = self.quantizer(z)
        recon = F.mse_loss(self.decoder(quantized), self.target(text, image))
        return {"loss": recon + quant_loss, "recon": recon, "quant": quant_loss, "codes": codes}

    @torch.no_grad()
    def codes(self, text: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.quantizer.residuals(self.encode(text, image))[0]

    @torch.no_grad()
    def init_codebooks(self, text: torch.Tensor, image: torch.Tensor | None, iters: int, seed: int) -> None:
        """k-means each level on the residuals the previous levels leave."""
        residual = self.encode(text, image)
        for level in range(self.quantizer.levels):
            centroids = torch.from_numpy(kmeans(residual.numpy(), self.quantizer.codebooks.shape[1], iters, seed + level))
            self.quantizer.codebooks[level].copy_(centroids)
            index = torch.cdist(residual, centroids).argmin(dim=1)
            residual = residual - centroids[index]

    @torch.no_grad()
    def reseed_dead_codes(self, text: torch.Tensor, image: torch.Tensor | None, min_count: int, generator: torch.Generator) -> int:
        """Replace codes used by fewer than `min_count` items with residuals of random items.

        Returns how many codes were re-seeded. Public RQ-VAE tokenizers skip this and collapse.
        """
        _, inputs = self.quantizer.residuals(self.encode(text, image))
        reseeded = 0
        size = self.quantizer.codebooks.shape[1]
        for level, residual in enumerate(inputs):
            index = torch.cdist(residual, self.quantizer.codebooks[level]).argmin(dim=1)
            counts = torch.bincount(index, minlength=size)
            dead = torch.nonzero(counts < max(min_count, 1)).flatten()
            if len(dead) == 0:
                continue
            picks = torch.randint(len(residual), (len(dead),), generator=generator)
            noise = (torch.randn(len(dead), residual.shape[1], generator=generator) * 1e-3).to(residual.device)
            self.quantizer.codebooks[level][dead] = residual[picks] + noise
            reseeded += len(dead)
        return reseeded
