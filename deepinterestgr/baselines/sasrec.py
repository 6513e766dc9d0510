"""SASRec (Kang & McAuley, 2018): a causal self-attention encoder over item ids, full-catalog scores.

The strong form of the baseline: trained with cross-entropy over the whole catalog on every next-item
target of every training sequence (windows over the whole history, as the compact GR trains), padding
masked as attention keys, settings chosen from a grid on validation NDCG@10, early-stopped on it, and
K seeds ranked by the sum of their log-softmaxes (`SASRecFit`), so GR with K members meets it at equal cost.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from deepinterestgr.config import SASRecShape
from deepinterestgr.metrics import ranking_metrics, ranks_from_scores
from deepinterestgr.progress import Progress
from deepinterestgr.recommender.sequences import window_spans


class SASRec(nn.Module):
    def __init__(self, num_items: int, cfg: SASRecShape):
        super().__init__()
        self.max_len, self.heads = cfg.max_len, cfg.heads
        self.items = nn.Embedding(num_items + 1, cfg.hidden_size, padding_idx=0)  # row 0 = padding
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden_size)
        layer = nn.TransformerEncoderLayer(cfg.hidden_size, cfg.heads, cfg.inner_size or 2 * cfg.hidden_size, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        # Small initial embeddings: unit-variance ones give logits (h @ E^T) so large that training crawls.
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden state per position for left-padded item ids (item row + 1; 0 = padding), at most `max_len` wide.

        Positions count back from the last column (the last item is always position max_len - 1), so
        a batch padded only to its longest row gives its real positions what full-width padding would."""
        length = ids.shape[1]
        padding = ids == 0
        x = self.items(ids) * self.items.embedding_dim**0.5 + self.positions(torch.arange(self.max_len - length, self.max_len, device=ids.device))
        # Padding is masked as a key; every position may still attend to itself, so the leading padding
        # positions of a left-padded row keep one key (a fully masked row gives NaN) and, being masked as
        # keys, never reach a real position.
        blocked = torch.ones(length, length, dtype=torch.bool, device=ids.device).triu(1) | padding.unsqueeze(1)
        blocked &= ~torch.eye(length, dtype=torch.bool, device=ids.device)
        return self.norm(self.encoder(self.dropout(x), mask=blocked.repeat_interleave(self.heads, dim=0)))

    def scores(self, ids: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (rows 0..N-1) after each sequence's last position."""
        return self.forward(ids)[:, -1] @ self.items.weight[1:].T


def _left_pad(sequences: list[list[int]], length: int) -> torch.Tensor:
    """Item rows + 1, left-padded with 0 to the longest sequence's width, cut to the last `length`."""
    length = max(1, min(length, max((len(seq) for seq in sequences), default=1)))
    out = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if seq:
            out[row, length - len(seq):] = torch.tensor(seq) + 1
    return out


def training_windows(train: Sequence[Sequence[int]], max_len: int) -> list[list[int]]:
    """Every user's training sequence cut into windows of `max_len + 1` items that together make every
    item after a user's first a next-item target exactly once (`window_spans`)."""
    return [list(seq[start:end]) for seq in train for start, end in window_spans(len(seq), max_len + 1)]


@torch.no_grad()
def ensemble_ranks(
    models: Sequence[SASRec], histories: list[list[int]], targets: np.ndarray, batch_size: int = 256,
    exclude_history: bool = False,
) -> np.ndarray:
    """[len(models), users]: row k is each target's 0-based full-ranking rank under the first k + 1 models,
    which rank by the sum of their log-softmaxes over the catalog (history items removed if asked).
    One forward pass per model and batch serves every ensemble size."""
    for model in models:
        model.eval()
    targets = np.asarray(targets)
    ranks = np.empty((len(models), len(histories)), dtype=np.int64)
    # Batches of similar length pad little: the order changes no row's scores.
    order = np.argsort([min(len(h), models[0].max_len) for h in histories], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        chunk = [list(histories[r]) for r in rows]
        removed = [[i for i in set(seen) if i != targets[r]] for seen, r in zip(chunk, rows)] if exclude_history else None
        summed = None
        for size, model in enumerate(models):
            log_probs = torch.log_softmax(model.scores(_left_pad(chunk, model.max_len)), dim=-1)
            summed = log_probs if summed is None else summed + log_probs
            scores = summed.numpy().copy()
            if removed is not None:
                for row, others in enumerate(removed):
                    scores[row, others] = -np.inf
            ranks[size, rows] = ranks_from_scores(scores, targets[rows])
    return ranks


def sasrec_ranks(
    models: SASRec | Sequence[SASRec], histories: list[list[int]], targets: np.ndarray, batch_size: int = 256,
    exclude_history: bool = False,
) -> np.ndarray:
    """Full-ranking 0-based rank of each target after its history (history items removed if asked).

    Several models rank by the sum of their log-softmaxes over the catalog (one model: its own order)."""
    models = [models] if isinstance(models, SASRec) else list(models)
    return ensemble_ranks(models, histories, targets, batch_size, exclude_history)[-1]


def epoch_progress(label: str, epochs: int) -> Callable[[int, dict | None], None]:
    """An `on_epoch` for `fit_sasrec` that prints progress lines (epochs done, the last validation NDCG@10)."""
    progress = Progress(label, epochs, "epochs")

    def report(epoch: int, validation: dict | None) -> None:
        progress.set(epoch + 1, f"val NDCG@10 {validation['val_ndcg@10']:.4f}" if validation else "")

    return report


def fit_sasrec(train: Sequence[Sequence[int]], valid_targets: np.ndarray, num_items: int, cfg: SASRecShape, seed: int,
               on_epoch: Callable[[int, dict | None], None] | None = None) -> tuple[SASRec, list[dict]]:
    """Train on every next-item target of the training sequences; keep the epoch with the best validation NDCG@10.

    `on_epoch(epoch, validation)` is called after every epoch (validation: the history entry, or None).
    """
    torch.manual_seed(seed)
    model = SASRec(num_items, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    windows = training_windows(train, cfg.max_len)
    valid_users = [u for u in range(len(train)) if valid_targets[u] >= 0 and len(train[u])]
    generator = torch.Generator().manual_seed(seed)
    best, best_state, stale, history = -1.0, None, 0, []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(windows), generator=generator).tolist()
        for start in range(0, len(order), cfg.batch_size):
            batch = _left_pad([windows[i] for i in order[start: start + cfg.batch_size]], cfg.max_len + 1)
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
        ranks = sasrec_ranks(model, [list(train[u]) for u in valid_users], valid_targets[valid_users])
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


def grid_points(cfg: SASRecShape, grid: dict[str, list]) -> list[SASRecShape]:
    """`cfg` with every combination of the grid's values (the first key varies slowest); no grid: `cfg` alone."""
    keys = list(grid)
    return [cfg.model_validate({**cfg.model_dump(), **dict(zip(keys, values))}) for values in itertools.product(*(grid[k] for k in keys))]


@dataclass
class SASRecFit:
    """The chosen setting's K models (seeds seed..seed+K-1), the grid it was chosen from and what it all cost."""

    models: list[SASRec]
    shape: SASRecShape
    grid: list[dict] = field(default_factory=list)  # per grid point: its settings, validation NDCG@10, epochs, seconds
    history: list[dict] = field(default_factory=list)  # the chosen setting's first model's validation history
    seconds: float = 0.0
    fits: int = 0


@dataclass(frozen=True)
class FitJob:
    """One SASRec fit of `fit_sasrec_members`: a setting, a seed and its progress label."""

    shape: SASRecShape
    seed: int
    label: str


@dataclass
class FitData:
    """What every fit of one `fit_sasrec_members` call trains and validates on; called on a `FitJob`,
    it fits it (a plain picklable callable, so a Ray task can run it: ray_jobs/evaluate.py does)."""

    train: Sequence[Sequence[int]]
    valid_targets: np.ndarray
    num_items: int

    def __call__(self, job: FitJob) -> tuple[SASRec, list[dict], float]:
        started = time.perf_counter()
        model, history = fit_sasrec(self.train, self.valid_targets, self.num_items, job.shape, job.seed,
                                    on_epoch=epoch_progress(job.label, job.shape.epochs))
        return model, history, time.perf_counter() - started


FitMap = Callable[[FitData, list[FitJob]], list[tuple[SASRec, list[dict], float]]]


def fit_one_after_another(data: FitData, jobs: list[FitJob]) -> list[tuple[SASRec, list[dict], float]]:
    """The default `FitMap`: every fit in this process, in order."""
    return [data(job) for job in jobs]


def fit_sasrec_members(train: Sequence[Sequence[int]], valid_targets: np.ndarray, num_items: int, cfg: SASRecShape,
                       grid: dict[str, list], members: int, seed: int, label: str = "SASRec",
                       fit_map: FitMap = fit_one_after_another) -> SASRecFit:
    """Fit every grid point with `seed`, keep the one with the best validation NDCG@10 (ties: the first),
    then fit it with seeds seed+1..seed+members-1: the models that rank together (`sasrec_ranks`).

    `fit_map` runs a list of fits (the grid's, then the members'); one that runs them at once changes no
    choice, only the wall time."""
    began = time.perf_counter()
    data = FitData(train, valid_targets, num_items)
    points = grid_points(cfg, grid)
    fits = fit_map(data, [FitJob(point, seed, label if len(points) == 1 else f"{label} grid {index + 1}/{len(points)}")
                          for index, point in enumerate(points)])
    tried, best = [], None
    for point, (model, history, seconds) in zip(points, fits):
        score = max(h["val_ndcg@10"] for h in history)
        tried.append({"settings": {k: getattr(point, k) for k in grid}, "val_ndcg@10": score,
                      "epochs_run": history[-1]["epoch"] + 1, "seconds": round(seconds, 1)})
        if best is None or score > best[0]:
            best = (score, point, model, history)
    _, shape, first, history = best
    others = fit_map(data, [FitJob(shape, seed + member, f"{label} member {member + 1}/{members}") for member in range(1, members)])
    return SASRecFit([first] + [model for model, _, _ in others], shape, tried if grid else [], history,
                     time.perf_counter() - began, len(points) + members - 1)
