"""Semantic IDs: code statistics, making every item's SID unique, external SID maps, the prefix trie."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepinterestgr.errors import DataError


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose code tuple is shared with an earlier item."""
    unique = np.unique(codes, axis=0).shape[0]
    return 1.0 - unique / len(codes)


def level_stats(codes: np.ndarray, sizes: list[int]) -> list[dict[str, float]]:
    """Per level: share of codes used, and perplexity (exp of the code-usage entropy)."""
    stats = []
    for level, size in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / counts.sum()
        stats.append({"utilisation": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum()))})
    return stats


def add_extra_level(codes: np.ndarray) -> np.ndarray:
    """TIGER-style: append a level numbering the items that share a tuple (0 for unique ones)."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    suffix = np.zeros(len(codes), dtype=np.int64)
    seen: dict[int, int] = {}
    for row, group in enumerate(inverse):
        suffix[row] = seen.get(group, 0)
        seen[group] = suffix[row] + 1
    return np.concatenate([codes, suffix[:, None]], axis=1)


def reassign_last_level(codes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """MiniOneRec-style: move colliding items to the nearest free last-level code of their prefix.

    `distances[i, k]` is item i's distance to last-level code k. The item nearest to a contested code
    keeps it; the others move, nearest free code first. Deterministic for the same inputs.
    """
    codes = codes.copy()
    size = distances.shape[1]
    prefixes: dict[tuple, list[int]] = {}
    for row, code in enumerate(codes[:, :-1]):
        prefixes.setdefault(tuple(code), []).append(row)
    for prefix, rows in prefixes.items():
        if len(rows) > size:
            raise DataError(
                f"{len(rows)} items share the prefix {list(prefix)} but the last level has only {size} codes: "
                "use tokenize.disambiguation=extra_level or a larger codebook"
            )
        last = codes[rows, -1]
        if len(np.unique(last)) == len(rows):
            continue
        taken: set[int] = set()
        order = sorted(rows, key=lambda r: (distances[r, codes[r, -1]], r))
        movers = []
        for row in order:
            if codes[row, -1] in taken:
                movers.append(row)
            else:
                taken.add(int(codes[row, -1]))
        for row in movers:
            for code in np.argsort(distances[row], kind="stable"):
                if int(code) not in taken:
                    codes[row, -1] = code
                    taken.add(int(code))
                    break
    return codes


_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


def load_external_sids(path: str | Path, item_ids: list[str]) -> np.ndarray:
    """Read a JSON map item_id -> code list ("<a_12>" tokens or integers) in catalog order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenize.external_path: {path} does not exist")
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected an object item_id -> list of codes")
    missing = [item for item in item_ids if item not in mapping]
    if missing:
        raise DataError(f"{path}: {len(missing)} catalog item(s) have no SID, e.g. {missing[:5]}")
    lengths = {item: len(mapping[item]) for item in item_ids}
    expected = max(set(lengths.values()), key=list(lengths.values()).count)
    ragged = [item for item, n in lengths.items() if n != expected]
    if ragged:
        raise DataError(f"{path}: SIDs have ragged lengths (most have {expected}), e.g. {ragged[:5]}")
    codes = np.zeros((len(item_ids), expected), dtype=np.int64)
    for row, item in enumerate(item_ids):
        for level, token in enumerate(mapping[item]):
            if isinstance(token, int):
                codes[row, level] = token
                continue
            match = _TOKEN.match(str(token))
            if not match or ord(match.group(1)) - ord("a") != level:
                raise DataError(f"{path}: item {item!r} level {level}: token {token!r} is not <{chr(97 + level)}_N> or an integer")
            codes[row, level] = int(match.group(2))
    if (codes < 0).any():
        raise DataError(f"{path}: negative codes for items {[item_ids[r] for r in np.flatnonzero((codes < 0).any(1))[:5]]}")
    return codes


@dataclass
class SIDTrie:
    """All SIDs as dense per-level transition tables.

    `children[l][node, code]` is the node reached from `node` at level l by `code`, or -1. Level 0 has
    one node (the root). The node reached after the last level is the item's row. A beam search gets
    its allowed-token mask as `children[l][nodes] >= 0`: a gather, not a loop per beam.
    """

    children: list[np.ndarray]
    sizes: list[int]

    @classmethod
    def build(cls, codes: np.ndarray, sizes: list[int] | None = None) -> SIDTrie:
        """Trie over unique SIDs; `sizes` are the codebook sizes per level (default: max code + 1)."""
        if len(np.unique(codes, axis=0)) != len(codes):
            raise ValueError("SIDs must be unique before building the trie")
        inferred = [int(codes[:, level].max()) + 1 for level in range(codes.shape[1])]
        sizes = list(sizes) if sizes is not None else inferred
        if len(sizes) != codes.shape[1] or any(s < i for s, i in zip(sizes, inferred)):
            raise ValueError(f"codebook sizes {sizes} do not cover the SIDs (need at least {inferred})")
        children, parent = [], np.zeros(len(codes), dtype=np.int64)
        for level, size in enumerate(sizes):
            last = level == len(sizes) - 1
            key = parent * size + codes[:, level]
            unique, node = np.unique(key, return_inverse=True)
            table = np.full((int(parent.max()) + 1, size), -1, dtype=np.int64)
            if last:
                table[parent, codes[:, level]] = np.arange(len(codes))
            else:
                table[unique // size, unique % size] = np.arange(len(unique))
            children.append(table)
            parent = node.reshape(-1)
        return cls(children, sizes)

    def lookup(self, code: list[int]) -> int:
        """Item row of a full SID, or -1 if it names no item."""
        node = 0
        for level, value in enumerate(code):
            if value < 0 or value >= self.sizes[level]:
                return -1
            node = int(self.children[level][node, value])
            if node < 0:
                return -1
        return node

    def to_bytes(self) -> bytes:
        """Serialise to .npz bytes."""
        buffer = io.BytesIO()
        np.savez(buffer, sizes=np.array(self.sizes), **{f"level{i}": t for i, t in enumerate(self.children)})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SIDTrie:
        arrays = np.load(io.BytesIO(data))
        sizes = arrays["sizes"].tolist()
        return cls([arrays[f"level{i}"] for i in range(len(sizes))], sizes)
