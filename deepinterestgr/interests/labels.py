"""Reward labels (RLDI): a small classifier that learns an LLM judge, and the item quality it yields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def named_descriptors(item: dict) -> list[dict]:
    """The item's descriptors that name something (mined rows may hold empty ones)."""
    mined = item.get("descriptors")
    # Ray Data hands list columns over as arrays, whose truth value is ambiguous: test for None.
    return [d for d in (mined if mined is not None else []) if d.get("descriptor")]


def good_descriptors(item: dict) -> list[str]:
    """The item's positively labelled descriptors (one without a label yet counts as positive); an item
    none of whose descriptors is labelled good keeps its most probable one (`p_good`). The one
    rule for which descriptors count: the SIDs, the served explanations and the benchmarks all call it.

    The label threshold is set for the judge's balanced accuracy, which leaves a third of a noisy
    catalog's items with no descriptor at all, true ones included; their interest channel would fall
    back to the text alone (bench/interest_ablation.py).
    """
    named = named_descriptors(item)
    good = [d["descriptor"] for d in named if d.get("label", 1) == 1]
    if good or not named:
        return good
    return [max(named, key=lambda d: d.get("p_good") or 0.0)["descriptor"]]


def item_text(title: str, description: str | None) -> str:
    """What the judge and the classifier read of an item: its title, then its description."""
    return f"{title}. {description}" if description else title


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def pair_features(descriptor: np.ndarray, item: np.ndarray) -> np.ndarray:
    """[d ; i ; d*i ; cos(d, i)] per (descriptor, item) pair: what it says, about what, and how well they
    match (the cosine once more as one feature: a few hundred judged pairs cannot teach it through d*i)."""
    return np.concatenate([descriptor, item, descriptor * item, cosine(descriptor, item)[:, None]], axis=1).astype(np.float32)


@dataclass
class LabelClassifier:
    """Logistic regression over pair features; `constant` when the judge gave a single label."""

    weight: np.ndarray | None
    bias: float
    constant: int | None = None

    def probability(self, features: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(features), float(self.constant))
        return 1.0 / (1.0 + np.exp(-(features @ self.weight + self.bias)))


def fit_classifier(features: np.ndarray, labels: np.ndarray, epochs: int, lr: float, weight_decay: float, seed: int) -> LabelClassifier:
    """Full-batch logistic regression (classes weighted to balance), deterministic for a seed."""
    labels = np.asarray(labels, dtype=np.float32)
    if len(np.unique(labels)) < 2:
        return LabelClassifier(None, 0.0, constant=int(labels[0]) if len(labels) else 0)
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    w = (torch.randn(x.shape[1], generator=generator) * 0.01).requires_grad_()
    b = torch.zeros(1, requires_grad=True)
    positive = float(y.mean())
    sample_weight = torch.where(y > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    optimiser = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * sample_weight).mean()
        loss.backward()
        optimiser.step()
    return LabelClassifier(w.detach().numpy(), float(b.detach()))


def agreement(predicted: np.ndarray, judged: np.ndarray) -> dict:
    """Share of pairs where the classifier says what the judge said, overall and per judge label."""
    predicted, judged = np.asarray(predicted), np.asarray(judged)
    out = {"agreement": round(float((predicted == judged).mean()), 4) if len(judged) else None}
    for label in (0, 1):
        mask = judged == label
        out[f"agreement_on_{label}"] = round(float((predicted[mask] == label).mean()), 4) if mask.any() else None
    out["majority_baseline"] = round(float(max(judged.mean(), 1 - judged.mean())), 4) if len(judged) else None
    return out


def choose_threshold(own: np.ndarray, mismatched: np.ndarray) -> tuple[float, float]:
    """The p(good) threshold that best separates an item's own descriptors from other items' ones.

    Returns (threshold, balanced accuracy): own pairs at or above it count as right, mismatched
    pairs below it. Own descriptors are mostly good and another item's are almost always unsupported,
    so this calibrates the judge without hand labels. 0.5 when either side is empty.
    """
    own, mismatched = np.asarray(own, dtype=float), np.asarray(mismatched, dtype=float)
    if not len(own) or not len(mismatched):
        return 0.5, float("nan")
    values = np.unique(np.concatenate([own, mismatched]))
    candidates = np.concatenate([(values[:-1] + values[1:]) / 2, values[-1:] + 1e-9, values[:1]])
    scores = [((own >= t).mean() + (mismatched < t).mean()) / 2 for t in candidates]
    best = int(np.argmax(scores))
    return float(candidates[best]), float(scores[best])


def truth_match(descriptor: str, interests: list[str]) -> bool:
    """Whether a descriptor names one of an item's true interests (either text contains the other)."""
    text = descriptor.lower().strip()
    return any(i.lower() in text or (len(text) >= 4 and text in i.lower()) for i in interests)


def item_quality(descriptors: list[dict]) -> float:
    """q_i = sum(c_k y_k) / sum(c_k) over an item's labelled descriptors (0 without any)."""
    total = sum(d["confidence"] for d in descriptors)
    return float(sum(d["confidence"] * d["label"] for d in descriptors) / total) if total > 0 else 0.0
