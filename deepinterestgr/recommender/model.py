"""The model factory: a compact Llama-style decoder over SID tokens, built from a config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deepinterestgr.recommender.vocab import SIDVocab

PAD, BOS, SEP = 0, 1, 2
SPECIAL_TOKENS = 3


@dataclass
class CompactModelConfig:
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    dropout: float = 0.0
    max_items: int = 50


def compact_model(sizes: list[int], cfg: CompactModelConfig, seed: int) -> tuple[LlamaForCausalLM, SIDVocab]:
    """A from-scratch causal LM whose vocabulary is PAD/BOS/SEP plus one token per (level, code)."""
    vocab = SIDVocab(tuple(sizes), SPECIAL_TOKENS)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=2 + cfg.max_items * len(sizes),
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=SEP,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval(), vocab
