"""sft.backbone=compact: a small Llama-style decoder over SID tokens, trained from scratch.

Its prompt is BOS + each history item's SID tokens (+ an item token per item with `sft.item_tokens`);
one training example covers every next-item target of a window at once. What it shares with the other
from-scratch backbone (options, metadata, building) is `FromScratch`, which `encoder_decoder` reuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepinterestgr.recommender.backbones.base import attach
from deepinterestgr.recommender.backbones.decoder_only import DecoderOnly
from deepinterestgr.recommender.formats import Example, ItemText, RecommenderMeta
from deepinterestgr.recommender.model import BOS, PAD, SEP, SPECIAL_TOKENS, add_embedding_dropout, start_items_from_content
from deepinterestgr.recommender.sequences import tokens, window_spans
from deepinterestgr.recommender.vocab import SIDVocab


@dataclass
class CompactModelConfig:
    """The shape of a from-scratch model."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    dropout: float = 0.0
    max_items: int = 50
    # Tokens after the SID vocabulary that are read, never generated (one per catalog item).
    item_tokens: int = 0


def compact_model(sizes: list[int], cfg: CompactModelConfig, seed: int) -> tuple[torch.nn.Module, SIDVocab]:
    """A from-scratch causal LM whose vocabulary is PAD/BOS/SEP plus one token per (level, code)."""
    # Imported here, not with the module: config validation imports every backbone to check its options,
    # and transformers' model classes take seconds to import (each `dig` command pays them).
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = SIDVocab(tuple(sizes), SPECIAL_TOKENS)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab.size + cfg.item_tokens,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=2 + cfg.max_items * (len(sizes) + bool(cfg.item_tokens)),
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=SEP,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=True,
    )
    return attach(LlamaForCausalLM(config).eval(), COMPACT), vocab


class CompactFormat:
    """BOS + SID tokens (+ an item token per item); one example covers every next-item target of a window at once.

    A user's training sequence is cut into windows of `max_items + 1` items (the last window ends at
    the last item; consecutive windows share one item, the context of the next window's first target),
    so every target is trained on and no prompt is longer than the model has positions for.

    Every format exposes the same calls, so the trainer, the evaluator and the server never ask which
    backbone they hold: `prompt(rows, interests)` (the tokens after which the next item's SID is
    generated), `user_examples(rows, interests)` (SFT examples from one user's training items),
    `item_examples(items)` (examples that align item text with SIDs), `pad_id`, `vocab`, `item_weight`.
    """

    def __init__(self, vocab: SIDVocab, codes: np.ndarray, max_items: int, item_tokens: bool = False, item_weight: float = 0.0):
        self.vocab, self.codes, self.max_items, self.item_tokens = vocab, codes, max_items, item_tokens
        self.pad_id = PAD
        self.item_weight = item_weight  # how rankings weigh the item head (RecommenderMeta.item_weight)

    def prompt(self, rows: list[int], interests: str | None = None) -> list[int]:
        return tokens(rows, self.codes, self.vocab, self.max_items, self.item_tokens)

    def user_examples(self, rows: list[int], interests: str | None = None) -> list[Example]:
        return [Example(tokens(rows[start:end], self.codes, self.vocab, 0, self.item_tokens), 1,
                        self.vocab.size if self.item_tokens else 0)
                for start, end in window_spans(len(rows), self.max_items + 1)]

    def item_examples(self, items: list[ItemText]) -> list[Example]:
        return []


class FromScratch:
    """What the from-scratch backbones share (mixed into `CompactBackbone` and the encoder-decoder's):
    the shape options, SID tokens after the special tokens, item tokens when configured, a factory of
    the architecture (`factory`) and a format class (`format_class`)."""

    name = ""
    factory = staticmethod(compact_model)
    format_class = CompactFormat

    def check(self, cfg) -> None:
        if cfg.llm != type(cfg.llm)():
            raise ValueError(f"sft.llm applies only to sft.backbone=llm, not {self.name}")
        if cfg.hidden_size % cfg.heads:
            raise ValueError(f"sft.heads ({cfg.heads}) must divide sft.hidden_size ({cfg.hidden_size})")

    def meta(self, cfg, sizes, items):
        return RecommenderMeta(self.name, list(sizes), SPECIAL_TOKENS, cfg.max_items, item_tokens=items if cfg.item_tokens else 0,
                               item_weight=cfg.ranking_item_weight, members=cfg.members, distilled=cfg.distill > 0), None

    def build(self, cfg, sizes, seed, gpu=False, items=0, item_rows=None):
        shape = CompactModelConfig(cfg.hidden_size, cfg.layers, cfg.heads, cfg.intermediate_size, cfg.dropout, cfg.max_items + 1,
                                   items if cfg.item_tokens else 0)
        model, vocab = self.factory(sizes, shape, seed)
        if cfg.item_token_init == "content":  # the config refuses it without item tokens
            start_items_from_content(model, vocab, items, item_rows)
        if cfg.embedding_dropout:
            add_embedding_dropout(model, cfg.embedding_dropout)
        return attach(model, self), vocab, None

    def format(self, meta, codes, tokenizer=None):
        return self.format_class(meta.vocab, codes, meta.max_items, bool(meta.item_tokens), meta.item_weight)


class CompactBackbone(FromScratch, DecoderOnly):
    name = "compact"


COMPACT = CompactBackbone()
