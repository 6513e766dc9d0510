"""Knowledge distillation of several trained members into one model (`sft.distill`).

The members' ensemble ranks by the sum of their log-probabilities; its per-token distribution is the
renormalised geometric mean of their softmaxes, which the student learns at every labelled SID position
(and, for the item head, at each item's first SID code), beside its own SFT loss. The members only read:
no dropout, no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepinterestgr.recommender.backbones.base import IGNORE
from deepinterestgr.recommender.vocab import SIDVocab


def mean_distribution(logits: list[torch.Tensor]) -> torch.Tensor:
    """Log-probabilities of the renormalised geometric mean of several models' softmaxes (rows: positions)."""
    return F.log_softmax(torch.stack([F.log_softmax(z.float(), -1) for z in logits]).mean(0), -1)


def kl(teacher: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(teacher || student), the teacher given as log-probabilities."""
    return (teacher.exp() * (teacher - F.log_softmax(student_logits.float(), -1))).sum(-1).mean()


def teacher_logits(teachers: list[torch.nn.Module], batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each member's logits on a training batch as it is (item tokens not dropped), without a graph."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # logits only: no teacher loss to compute
    with torch.no_grad():
        return [t(**inputs).logits for t in teachers]


def distillation_loss(student_logits: torch.Tensor, teachers: list[torch.nn.Module], batch: dict[str, torch.Tensor],
                      vocab: SIDVocab, item_head: float, first_code: torch.Tensor | None = None) -> torch.Tensor:
    """KL from the members' mean distribution to the student's at the labelled positions of a decoder-only
    batch (whole vocabulary), plus `item_head` x the same over the item-token rows at `first_code` (each
    item's first SID code position, `sft_loop.first_code_positions`)."""
    labelled = batch["labels"][:, 1:] != IGNORE
    taught = [z[:, :-1] for z in teacher_logits(teachers, batch)]
    student = student_logits[:, :-1]
    loss = kl(mean_distribution([z[labelled] for z in taught]), student[labelled])
    if item_head:
        items = slice(vocab.size, None)
        loss = loss + item_head * kl(mean_distribution([z[first_code][:, items] for z in taught]), student[first_code][:, items])
    return loss
