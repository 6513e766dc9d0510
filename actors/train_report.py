"""What every Ray Train worker loop shares: its log level, reporting an epoch with a rank-0 checkpoint, reading it back.

Ray Train's own log lines (every report, every checkpoint path) are turned down by
`ray.train_log_level`; rank 0 writes one short progress line per report instead.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Sequence

import ray.train
import torch

from deepinterestgr.errors import DataError


def set_worker_log_level(level: str) -> None:
    """Apply `ray.train_log_level` in a training worker.

    Ray Train logs every report at INFO through a logger named by its file path, which propagates to
    the root logger and so escapes its own LoggingConfig: the worker's root level is what silences it.
    """
    logging.getLogger().setLevel(level)


def progress_line(stage: str, epochs: int, metrics: dict, show: Sequence[str]) -> str:
    """`sft epoch 3/10: loss 2.585, val_hr@10 0.13` from the `show` keys present in `metrics`."""
    epoch = metrics.get("epoch", -1)
    where = "before training" if epoch < 0 else f"epoch {epoch + 1}/{epochs}"
    figures = ", ".join(f"{key} {metrics[key]:.4g}" for key in show if key in metrics)
    return f"{stage} {where}: {figures}"


def report_epoch(stage: str, epochs: int, metrics: dict, state: Callable[[], dict], filename: str,
                 show: Sequence[str]) -> None:
    """`ray.train.report(metrics)` on every worker; rank 0 attaches `state()` saved as `filename`."""
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as folder:
        saved = None
        if rank == 0:
            torch.save(state(), os.path.join(folder, filename))
            saved = ray.train.Checkpoint.from_directory(folder)
            # Not print(): Ray Train patches it to log and echo, which shows every line twice.
            sys.stderr.write(progress_line(stage, epochs, metrics, show) + "\n")
            sys.stderr.flush()
        ray.train.report(metrics, checkpoint=saved)


def read_checkpoint(checkpoint: ray.train.Checkpoint, filename: str) -> dict:
    """The state a worker saved with `report_epoch`, with every tensor on the CPU.

    GPU workers save CUDA tensors (optimizer moments, RQ-VAE weights); the driver that reads the best
    checkpoint, or a resumed worker before it moves its model, may have no GPU. Only tensors and plain
    values are unpickled (`weights_only`): a run folder on a shared bucket must not be a way to run code
    on every worker that resumes from it, so a file holding anything else is refused.
    """
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, filename)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DataError(f"checkpoint {checkpoint.path}/{filename} holds more than tensors and plain values "
                            f"and was not loaded (written by another program, or tampered with): {str(exc).splitlines()[0]}") from None
