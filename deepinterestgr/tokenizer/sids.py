"""Semantic IDs: code statistics, making every item's SID unique, external SID maps, the prefix trie."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

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
    # rank of each row within its group, in row order: a stable sort groups rows, keeping their order
    order = np.argsort(inverse, kind="stable")
    grouped = inverse[order]
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
    suffix = np.empty(len(codes), dtype=np.int64)
    suffix[order] = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
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
    """All SIDs as sparse per-level transition lists (CSR): memory O(items), not O(prefixes x codebook).

    At level l, node n's outgoing edges are entries `offsets[l][n]:offsets[l][n+1]` of `codes[l]`
    (sorted) and `targets[l]` (the node reached, or at the last level the item's row). Level 0 has one
    node, the root. `children(level, nodes)` expands the edges of any tensor of nodes into a dense
    [..., codebook] table (-1 where no SID continues) with one gather and one scatter, so a beam search
    gets the allowed codes of all its beams at once. The arrays are copied to a device once and kept.
    """

    offsets: list[np.ndarray]
    codes: list[np.ndarray]
    targets: list[np.ndarray]
    sizes: list[int]

    def __post_init__(self):
        self._on_device: dict[str, tuple[list[torch.Tensor], ...]] = {}

    @classmethod
    def build(cls, codes: np.ndarray, sizes: list[int] | None = None) -> SIDTrie:
        """Trie over unique SIDs; `sizes` are the codebook sizes per level (default: max code + 1)."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(np.unique(codes, axis=0)) != len(codes):
            raise ValueError("SIDs must be unique before building the trie")
        inferred = [int(codes[:, level].max()) + 1 for level in range(codes.shape[1])]
        sizes = list(sizes) if sizes is not None else inferred
        if len(sizes) != codes.shape[1] or any(s < i for s, i in zip(sizes, inferred)):
            raise ValueError(f"codebook sizes {sizes} do not cover the SIDs (need at least {inferred})")
        offsets, edge_codes, targets = [], [], []
        parent, nodes = np.zeros(len(codes), dtype=np.int64), 1
        for level, size in enumerate(sizes):
            last = level == len(sizes) - 1
            key = parent * size + codes[:, level]
            unique, node = np.unique(key, return_inverse=True)
            # unique keys are sorted by (parent, code): exactly CSR order
            offsets.append(_offsets(np.bincount(unique // size, minlength=nodes)))
            edge_codes.append((unique % size).astype(_code_dtype(size)))
            if last:
                row_of_key = np.empty(len(unique), dtype=np.int64)
                row_of_key[node.reshape(-1)] = np.arange(len(codes))
                targets.append(row_of_key.astype(np.int32 if len(codes) < 2**31 else np.int64))
            else:
                targets.append(np.arange(len(unique), dtype=np.int32 if len(unique) < 2**31 else np.int64))
            parent, nodes = node.reshape(-1), len(unique)
        return cls(offsets, edge_codes, targets, sizes)

    def node_count(self, level: int) -> int:
        """Nodes at `level` (level 0: the root); past the last level, the items."""
        return len(self.offsets[level]) - 1 if level < len(self.sizes) else len(self.targets[-1])

    def nbytes(self) -> int:
        """Bytes held by the trie's arrays."""
        return sum(a.nbytes for arrays in (self.offsets, self.codes, self.targets) for a in arrays)

    def edges(self, level: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(codes, targets) of one node's outgoing edges."""
        start, end = self.offsets[level][node], self.offsets[level][node + 1]
        return self.codes[level][start:end], self.targets[level][start:end]

    def children(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """[..., sizes[level]] int64: the node (or item row) each code leads to from `nodes`, else -1."""
        offsets, codes, targets = (arrays[level] for arrays in self._tensors(nodes.device))
        size = self.sizes[level]
        start = offsets[nodes].long()
        degree = offsets[nodes + 1].long() - start
        span = torch.arange(int(degree.max()) if degree.numel() else 0, device=nodes.device)
        valid = span < degree.unsqueeze(-1)
        entry = torch.where(valid, start.unsqueeze(-1) + span, torch.zeros_like(span))
        # invalid slots write into a spare column that is cut off
        column = torch.where(valid, codes[entry].long(), torch.full_like(entry, size))
        out = torch.full((*nodes.shape, size + 1), -1, dtype=torch.long, device=nodes.device)
        out.scatter_(-1, column, torch.where(valid, targets[entry].long(), torch.full_like(entry, -1)))
        return out[..., :size]

    def _tensors(self, device: torch.device) -> tuple[list[torch.Tensor], ...]:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(
                [torch.from_numpy(a).to(device) for a in arrays]
                for arrays in (self.offsets, self.codes, self.targets)
            )
        return self._on_device[key]

    @cached_property
    def item_nodes(self) -> list[np.ndarray]:
        """`item_nodes[l][row]`: the node at level l on the path to item `row`."""
        parents = [np.repeat(np.arange(len(o) - 1), np.diff(o)) for o in self.offsets]
        path = np.empty(self.node_count(len(self.sizes)), dtype=np.int64)
        path[self.targets[-1]] = parents[-1]
        paths = [path]
        for level in range(len(self.sizes) - 2, -1, -1):
            parent_of = np.empty(self.node_count(level + 1), dtype=np.int64)
            parent_of[self.targets[level]] = parents[level]
            paths.append(parent_of[paths[-1]])
        return paths[::-1]

    def lookup(self, code: list[int]) -> int:
        """Item row of a full SID, or -1 if it names no item."""
        node = 0
        for level, value in enumerate(code):
            codes, targets = self.edges(level, node)
            at = int(np.searchsorted(codes, value))
            if at >= len(codes) or codes[at] != value:
                return -1
            node = int(targets[at])
        return node

    def to_bytes(self) -> bytes:
        """Serialise to .npz bytes."""
        buffer = io.BytesIO()
        arrays = {f"{name}{i}": a for name, group in (("offsets", self.offsets), ("codes", self.codes), ("targets", self.targets))
                  for i, a in enumerate(group)}
        np.savez(buffer, sizes=np.array(self.sizes), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SIDTrie:
        arrays = np.load(io.BytesIO(data))
        sizes = arrays["sizes"].tolist()
        if "level0" in arrays:  # runs tokenized before the sparse layout held dense tables
            return cls._from_dense([arrays[f"level{i}"] for i in range(len(sizes))], sizes)
        return cls(*([arrays[f"{name}{i}"] for i in range(len(sizes))] for name in ("offsets", "codes", "targets")), sizes)

    @classmethod
    def _from_dense(cls, tables: list[np.ndarray], sizes: list[int]) -> SIDTrie:
        offsets, codes, targets = [], [], []
        for table, size in zip(tables, sizes):
            rows, columns = np.nonzero(table >= 0)
            offsets.append(_offsets(np.bincount(rows, minlength=table.shape[0])))
            codes.append(columns.astype(_code_dtype(size)))
            targets.append(table[rows, columns].astype(np.int64))
        return cls(offsets, codes, targets, sizes)


def _offsets(degrees: np.ndarray) -> np.ndarray:
    out = np.zeros(len(degrees) + 1, dtype=np.int64)
    np.cumsum(degrees, out=out[1:])
    return out.astype(np.int32) if out[-1] < 2**31 else out


def _code_dtype(size: int) -> type:
    return np.int16 if size <= 2**15 else np.int32
