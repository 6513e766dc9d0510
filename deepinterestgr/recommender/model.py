"""What every backbone's model shares: the special tokens, the item-token start, embedding dropout, the
trainable state and the exported model (the models themselves are built in `backbones/`)."""

from __future__ import annotations

import numpy as np
import torch

from deepinterestgr.recommender.vocab import SIDVocab

PAD, BOS, SEP = 0, 1, 2
SPECIAL_TOKENS = 3


def start_items_from_content(model: torch.nn.Module, vocab: SIDVocab, items: int, item_rows: np.ndarray | None) -> None:
    """Set the item-token rows to the items' `content_rows` (sft.item_token_init=content)."""
    weight = model.get_input_embeddings().weight
    if item_rows is None or item_rows.shape != (items, weight.shape[1]):
        got = "none" if item_rows is None else f"shape {tuple(item_rows.shape)}"
        raise ValueError(f"sft.item_token_init=content needs the content rows of all {items} items, "
                         f"{weight.shape[1]} wide; got {got}")
    with torch.no_grad():
        # On the spread of the model's own SID rows (Llama and T5 initialise their embeddings differently).
        scale = weight[SPECIAL_TOKENS: vocab.size].std()
        weight[vocab.size: vocab.size + items] = torch.tensor(item_rows, dtype=weight.dtype) * scale


def add_embedding_dropout(model: torch.nn.Module, rate: float) -> None:
    """Dropout on the token embeddings' output while the model trains (forward hooks: neither transformers
    config has this dropout, and the saved weights and their keys stay as they are). T5's encoder and
    decoder look tokens up through modules of their own that share the one weight: each gets the hook."""
    dropout = torch.nn.Dropout(rate)
    weight = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight is weight:
            module.register_forward_hook(lambda module, _, out: dropout(out) if module.training else out)


def content_rows(vectors: np.ndarray, width: int) -> np.ndarray:
    """Item vectors [items, d] -> [items, width] float32: their top principal components (zero columns
    past d or past the item count), each component's sign fixed so the result does not depend on the
    eigen-solver, scaled to unit overall standard deviation (`start_items_from_content` rescales to the model's rows).
    From the d x d covariance, so memory stays that of the vectors for a catalog of millions."""
    centred = np.asarray(vectors, dtype=np.float32)
    centred = centred - centred.mean(axis=0)
    variances, axes = np.linalg.eigh((centred.T @ centred).astype(np.float64))
    keep = np.argsort(variances)[::-1][: min(width, len(centred))]
    scores = centred @ axes[:, keep].astype(np.float32)
    scores *= np.where(scores[np.abs(scores).argmax(axis=0), np.arange(scores.shape[1])] < 0, -1.0, 1.0).astype(np.float32)
    out = np.zeros((len(centred), width), dtype=np.float32)
    out[:, : scores.shape[1]] = scores
    spread = out.std()
    return out / spread if spread > 0 else out


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (everything, or the LoRA and SID-token weights)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def export_model(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model for saving and serving: LoRA and token deltas merged into the weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
