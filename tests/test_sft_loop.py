"""An SFT epoch depends on its seed and the state it starts from only, so a resumed run equals an uninterrupted one."""

import numpy as np
import torch

from deepinterestgr.config import SFTConfig
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import build_model, trainable_state
from deepinterestgr.recommender.sft_loop import epoch_seed, optimizer_and_schedule, train_epoch


def _state_after(epochs: range, start: dict | None, disturb: bool):
    cfg = SFTConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, dropout=0.3, embedding_dropout=0.2, batch_size=4, epochs=3)
    model, vocab, _ = build_model(cfg, [4, 4], seed=0)
    rng = np.random.default_rng(0)
    examples = [Example([int(t) for t in rng.integers(3, 10, size=9)], 3) for _ in range(16)]
    groups = np.arange(16)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(examples))
    if start is not None:
        model.load_state_dict(start["model"], strict=False)
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    for epoch in epochs:
        if disturb:
            torch.rand(1000)  # a restarted worker's generator is wherever its process left it
        train_epoch(model, optimizer, scheduler, examples, groups, cfg, vocab, 0, epoch_seed(0, epoch, 0), False)
    return {"model": trainable_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def test_a_run_resumed_after_its_first_epoch_ends_with_the_uninterrupted_runs_weights_tiny_random_model():
    straight = _state_after(range(3), None, disturb=False)
    first = _state_after(range(1), None, disturb=False)
    resumed = _state_after(range(1, 3), first, disturb=True)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
