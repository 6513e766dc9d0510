"""Token ids for Semantic IDs: one token per (level, code), after the model's own tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SIDVocab:
    """Maps (level, code) to a token id: `offset + start[level] + code`.

    `offset` is the size of the vocabulary before the SID tokens: the special tokens of the compact
    model, or the pretrained LLM's whole vocabulary.
    """

    sizes: tuple[int, ...]
    offset: int

    @property
    def starts(self) -> np.ndarray:
        return self.offset + np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def size(self) -> int:
        """Total vocabulary size including the tokens before the SIDs."""
        return self.offset + int(sum(self.sizes))

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """Token ids of SIDs: codes [..., levels] -> tokens [..., levels]."""
        codes = np.asarray(codes)
        if codes.shape[-1] != self.levels:
            raise ValueError(f"SIDs have {codes.shape[-1]} levels, the vocabulary {self.levels}")
        if (codes < 0).any() or (codes >= np.array(self.sizes)).any():
            raise ValueError("a SID code is outside its level's codebook")
        return codes + self.starts
