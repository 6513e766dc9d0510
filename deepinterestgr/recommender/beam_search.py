"""Constrained beam search over the SID trie, batched over users, with the model's KV cache.

The trie turns "which codes may follow these prefixes" into one gather for all beams of all users;
invalid SIDs cannot be generated. Scores are sums of full-vocabulary log-probabilities, so with a beam
at least as wide as the catalog the result equals scoring every item exhaustively (`exhaustive_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepinterestgr.recommender.decoding import completion_logprobs, left_pad, prefill, step
from deepinterestgr.recommender.vocab import SIDVocab
from deepinterestgr.tokenizer.sids import SIDTrie


@dataclass
class BeamResult:
    """Per user, best first: item rows (-1 where fewer valid items exist) and their log-probabilities."""

    items: np.ndarray  # [B, K]
    scores: np.ndarray  # [B, K]


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    prompts: list[list[int]],
    trie: SIDTrie,
    vocab: SIDVocab,
    beam_width: int,
    top_k: int,
    pad_id: int = 0,
    exclude: list[list[int]] | None = None,
    item_weight: float = 0.0,
) -> BeamResult:
    """Top-`top_k` distinct items per prompt by constrained beam search of width `beam_width`.

    `exclude[b]` (item rows) can never be returned for prompt b: prefixes all of whose items are
    excluded are pruned at every level, so no beam is spent on them and the result still holds
    `min(top_k, items left)` items without widening the beam.

    `item_weight` > 0 (models with an item head, `sft.item_head`): an item's score is its SID
    log-probability plus `item_weight` x the item head's log-probability (a softmax over the item-token
    rows at the prompt's last position). The search stays one pass: a prefix is ranked by its SID
    log-probability so far plus the best item-head term below it, an upper bound of every item under it
    (the SID tokens still to come have log-probabilities <= 0), so items the head favours are not
    pruned early and the result is exact when the beam covers the catalog.

    `model` may be an `Ensemble`: its log-probabilities are the sum of its members', so an item's SID
    term is the sum of the members' and its item-head term is the members' heads multiplied and
    renormalised; every user's items rank as by the sum of the members' own scores.
    """
    if list(trie.sizes) != list(vocab.sizes):
        raise ValueError(f"the trie's codebook sizes {trie.sizes} differ from the vocabulary's {list(vocab.sizes)}")
    if top_k > beam_width:
        raise ValueError(f"top_k ({top_k}) cannot exceed beam_width ({beam_width})")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the recommender adds BOS)")
    device = next(model.parameters()).device
    batch = len(prompts)
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    state, logprobs = prefill(model, ids, mask)  # [B, V]
    starts = vocab.starts

    bonus = _item_bonus(trie, vocab, logprobs, item_weight, exclude) if item_weight else None

    nodes = torch.zeros((batch, 1), dtype=torch.long, device=device)  # one beam per user: the root
    scores = torch.zeros((batch, 1), device=device)  # SID log-probabilities so far
    rows = torch.arange(batch, device=device).unsqueeze(1)
    blocked = _blocked_keys(trie, exclude, device) if exclude is not None else None
    for level, size in enumerate(vocab.sizes):
        children = trie.children(level, nodes)  # [B, beams, size]
        beams = nodes.shape[1]
        level_lp = logprobs[:, starts[level]: starts[level] + size].view(batch, beams, size)
        allowed = children >= 0
        if blocked is not None:
            count, keys = blocked[level]
            allowed &= ~torch.isin(rows.unsqueeze(-1) * count + children.clamp(min=0), keys)
        total = torch.where(allowed, scores.unsqueeze(-1) + level_lp, torch.full_like(level_lp, float("-inf")))
        key = total
        if bonus is not None:
            key = total + bonus[level].gather(1, children.clamp(min=0).view(batch, -1)).view_as(total)
        ranked, flat = key.view(batch, -1).topk(min(beam_width, beams * size), dim=1)
        scores = total.view(batch, -1).gather(1, flat)
        parent, code = flat // size, flat % size
        nodes = children.reshape(batch, -1).gather(1, flat)
        if level == vocab.levels - 1:
            break
        # Cache row b*beams+p holds user b's beam p; the new beams pick (and duplicate) their parents' rows.
        beam_index = (rows * beams + parent).view(-1)
        state, logprobs = step(model, state, beam_index, (code + int(starts[level])).view(-1, 1))
    # At the last level the bonus is the item's own term, so `ranked` is the final score.
    items = torch.where(torch.isfinite(ranked), nodes, torch.full_like(nodes, -1))
    return BeamResult(items[:, :top_k].cpu().numpy(), ranked[:, :top_k].cpu().numpy())


def item_head_logprobs(logprobs: torch.Tensor, vocab: SIDVocab, items: int) -> torch.Tensor:
    """The item head's log-probabilities [B, items]: the item-token rows of a first-step distribution, renormalised."""
    if logprobs.shape[1] < vocab.size + items:
        raise ValueError(f"item scoring needs a model with an item token per catalog item ({items}); "
                         f"this model's vocabulary ends at {logprobs.shape[1]} (retrain with sft.item_tokens=true)")
    head = logprobs[:, vocab.size: vocab.size + items]
    return head - head.logsumexp(dim=1, keepdim=True)


def _item_bonus(trie: SIDTrie, vocab: SIDVocab, logprobs: torch.Tensor, weight: float,
                exclude: list[list[int]] | None) -> list[torch.Tensor]:
    """Per level, [B, nodes reached]: `weight` x the best item-head log-probability among the items below each node."""
    items = trie.node_count(len(trie.sizes))
    term = weight * item_head_logprobs(logprobs, vocab, items)
    if exclude is not None:
        prompt, rows = _excluded_pairs(exclude, items)
        term[torch.from_numpy(prompt).to(term.device), torch.from_numpy(rows).to(term.device)] = float("-inf")
    out = []
    for below in range(1, len(trie.sizes) + 1):
        if below == len(trie.sizes):
            out.append(term)
            continue
        nodes_of = torch.from_numpy(trie.item_nodes[below]).to(term.device).expand(len(term), -1)
        best = torch.full((len(term), trie.node_count(below)), float("-inf"), device=term.device)
        out.append(best.scatter_reduce(1, nodes_of, term, "amax"))
    return out


def _blocked_keys(trie: SIDTrie, exclude: list[list[int]], device) -> list[tuple[int, torch.Tensor]]:
    """Per level, (node count, keys `b * count + node`) of the children whose items prompt b excludes all of."""
    items = trie.node_count(len(trie.sizes))
    prompt, rows = _excluded_pairs(exclude, items)
    out = []
    for level in range(len(trie.sizes)):
        below = level + 1  # the children reached at this level are nodes of the next one (items after the last)
        nodes_of = trie.item_nodes[below] if below < len(trie.sizes) else np.arange(items)
        count = trie.node_count(below)
        keys, hits = np.unique(prompt * count + nodes_of[rows], return_counts=True)
        full = hits == np.bincount(nodes_of, minlength=count)[keys % count]
        out.append((count, torch.from_numpy(keys[full]).to(device)))
    return out


@torch.no_grad()
def exhaustive_scores(
    model: torch.nn.Module, prompt: list[int], codes: np.ndarray, vocab: SIDVocab, batch_size: int = 256, pad_id: int = 0
) -> np.ndarray:
    """Log-probability of every item's SID after `prompt`, by teacher forcing: the reference ranking."""
    device = next(model.parameters()).device
    tokens = torch.from_numpy(vocab.encode(codes)).to(device)
    out = np.zeros(len(codes))
    for start in range(0, len(codes), batch_size):
        chunk = tokens[start: start + batch_size]
        out[start: start + len(chunk)] = completion_logprobs(model, [prompt] * len(chunk), chunk, pad_id).sum(1).cpu().numpy()
    return out


def _excluded_pairs(exclude: list[list[int]], items: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, item row) of every valid exclusion, each pair once."""
    prompt = np.repeat(np.arange(len(exclude)), [len(rows) for rows in exclude])
    rows = np.concatenate([np.asarray(rows, dtype=np.int64) for rows in exclude]) if len(prompt) else np.zeros(0, dtype=np.int64)
    valid = (rows >= 0) & (rows < items)
    pairs = np.unique(prompt[valid] * items + rows[valid])
    return pairs // items, pairs % items
