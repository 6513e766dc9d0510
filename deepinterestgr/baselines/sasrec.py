"""SASRec (Kang & McAuley, 2018): a causal self-attention encoder over item ids, full-catalog scores.

Trained sequence-at-once with cross-entropy over the whole catalog, early-stopped on validation
NDCG@10, and scored by full ranking through the shared metrics module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from deepinterestgr.config import SASRecShape
from deepinterestgr.metrics import ranking_metrics, ranks_from_scores
from deepinterestgr.progress import Progress


class SASRec(nn.Module):
    def __init__(self, num_items: int, cfg: SASRecShape):
        super().__init__()
        self.max_len = cfg.max_len
        self.items = nn.Embedding(num_items + 1, cfg.hidden_size, padding_idx=0)  # row 0 = padding
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden_size)
        layer = nn.TransformerEncoderLayer(cfg.hidden_size, cfg.heads, cfg.hidden_size * 2, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        # Small initial embeddings: unit-variance ones give logits (h @ E^T) so large that training crawls.
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden state per position for left-padded item ids (item row + 1; 0 = padding)."""
        length = ids.shape[1]
        x = self.items(ids) * self.items.embedding_dim**0.5 + self.positions(torch.arange(length, device=ids.device))
        # Padded positions are zeroed rather than masked as keys: a fully masked attention row (the
        # first positions of a left-padded sequence) would yield NaN that then leaks into valid rows.
        x = x * (ids != 0).unsqueeze(-1)
        causal = torch.triu(torch.full((length, length), float("-inf"), device=ids.device), diagonal=1)
        return self.norm(self.encoder(self.dropout(x), mask=causal))

    def scores(self, ids: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (rows 0..N-1) after each sequence's last position."""
        return self.forward(ids)[:, -1] @ self.items.weight[1:].T


def _left_pad(sequences: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if seq:
            out[row, length - len(seq):] = torch.tensor(seq) + 1
    return out


@torch.no_grad()
def sasrec_ranks(
    model: SASRec, histories: list[list[int]], targets: np.ndarray, batch_size: int = 256, exclude_history: bool = False
) -> np.ndarray:
    """Full-ranking 0-based rank of each target after its history (history items removed if asked)."""
    model.eval()
    ranks = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start: start + batch_size]
        scores = model.scores(_left_pad(chunk, model.max_len)).numpy()
        if exclude_history:
            for row, seen in enumerate(chunk):
                others = [i for i in set(seen) if i != targets[start + row]]
                scores[row, others] = -np.inf
        ranks.append(ranks_from_scores(scores, targets[start: start + batch_size]))
    return np.concatenate(ranks)


def epoch_progress(label: str, epochs: int) -> Callable[[int, dict | None], None]:
    """An `on_epoch` for `fit_sasrec` that prints progress lines (epochs done, the last validation NDCG@10)."""
    progress = Progress(label, epochs, "epochs")

    def report(epoch: int, validation: dict | None) -> None:
        progress.set(epoch + 1, f"val NDCG@10 {validation['val_ndcg@10']:.4f}" if validation else "")

    return report


def fit_sasrec(train: list[list[int]], valid_targets: np.ndarray, num_items: int, cfg: SASRecShape, seed: int,
               on_epoch: Callable[[int, dict | None], None] | None = None) -> tuple[SASRec, list[dict]]:
    """Train on the training sequences; keep the epoch with the best validation NDCG@10.

    `on_epoch(epoch, validation)` is called after every epoch (validation: the history entry, or None).
    """
    torch.manual_seed(seed)
    model = SASRec(num_items, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sequences = [s for s in train if len(s) >= 2]
    valid_users = [u for u in range(len(train)) if valid_targets[u] >= 0 and train[u]]
    generator = torch.Generator().manual_seed(seed)
    best, best_state, stale, history = -1.0, None, 0, []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(sequences), generator=generator).tolist()
        for start in range(0, len(order), cfg.batch_size):
            batch = _left_pad([sequences[i] for i in order[start: start + cfg.batch_size]], cfg.max_len + 1)
            inputs, labels = batch[:, :-1], batch[:, 1:] - 1  # labels: next item row, -1 where padding
            logits = model.forward(inputs) @ model.items.weight[1:].T
            loss = nn.functional.cross_entropy(logits.reshape(-1, num_items), labels.reshape(-1), ignore_index=-1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if (epoch + 1) % cfg.eval_every and epoch != cfg.epochs - 1:
            if on_epoch is not None:
                on_epoch(epoch, None)
            continue
        ranks = sasrec_ranks(model, [train[u] for u in valid_users], valid_targets[valid_users])
        ndcg = ranking_metrics(ranks, (10,))["ndcg@10"]
        history.append({"epoch": epoch, "loss": float(loss.detach()), "val_ndcg@10": ndcg})
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        if ndcg > best:
            best, stale = ndcg, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model, history
