"""The RQ-VAE as a library, on small random data (no Ray)."""

import numpy as np
import torch

from deepinterestgr.config import RQVAEConfig
from deepinterestgr.tokenizer.rkmeans import residual_kmeans
from deepinterestgr.tokenizer.rqvae import RQVAE
from deepinterestgr.tokenizer.sids import level_stats


def _data(n=400, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, d, generator=g)
    return centres[torch.randint(20, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


def test_collapsed_codebook_is_recovered_by_reseeding():
    torch.manual_seed(0)
    x = _data()
    cfg = RQVAEConfig(hidden_dims=[32], code_dim=8, levels=2, codebook_size=16)
    model = RQVAE(x.shape[1], None, cfg)
    model.fit_input_stats(x)
    with torch.no_grad():
        model.quantizer.codebooks.copy_(model.quantizer.codebooks[:, :1].expand_as(model.quantizer.codebooks))
    before = level_stats(model.codes(x).numpy(), [16, 16])
    assert before[0]["utilisation"] == 1 / 16
    reseeded = model.reseed_dead_codes(x, None, 1, torch.Generator().manual_seed(1))
    after = level_stats(model.codes(x).numpy(), [16, 16])
    assert reseeded >= 15
    assert after[0]["utilisation"] > 0.5


def test_kmeans_init_uses_most_codes_and_training_lowers_reconstruction():
    torch.manual_seed(0)
    x = _data()
    model = RQVAE(x.shape[1], None, RQVAEConfig(hidden_dims=[32], code_dim=8, levels=2, codebook_size=16))
    model.fit_input_stats(x)
    model.init_codebooks(x, None, iters=10, seed=0)
    assert level_stats(model.codes(x).numpy(), [16, 16])[0]["utilisation"] > 0.8
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = float(model(x)["recon"].detach())
    for _ in range(100):
        out = model(x)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert float(model(x)["recon"].detach()) < 0.8 * first


def test_fusion_reconstructs_text_and_image():
    x, img = _data(d=16), _data(d=8, seed=1)
    model = RQVAE(16, 8, RQVAEConfig(hidden_dims=[16], code_dim=4, levels=2, codebook_size=8), image_projection_dim=4)
    model.fit_input_stats(x, img)
    out = model(x, img)
    assert model.decoder[-1].out_features == 24 and torch.isfinite(out["loss"])


def test_residual_kmeans_is_deterministic_for_a_seed():
    x = _data().numpy()
    a, _, _ = residual_kmeans(x, 2, 8, 10, seed=3)
    b, _, _ = residual_kmeans(x, 2, 8, 10, seed=3)
    assert np.array_equal(a, b) and a.shape == (400, 2)
