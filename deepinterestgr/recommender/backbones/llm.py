"""sft.backbone=llm: a pretrained causal LM (`sft.llm`) with one new token per SID (level, code), LoRA or
full fine-tuning, text prompts from versioned templates with SID tokens spliced in by id, and LC-Rec's
item-alignment tasks (title/descriptors -> SID, SID -> title)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepinterestgr.prompts import load_template, render
from deepinterestgr.recommender.backbones.base import attach
from deepinterestgr.recommender.backbones.decoder_only import DecoderOnly
from deepinterestgr.recommender.formats import Example, ItemText, RecommenderMeta
from deepinterestgr.recommender.vocab import SIDVocab

if TYPE_CHECKING:  # config validates sft.backbone through this package: no import of it at run time
    from deepinterestgr.config import LLMBackboneConfig

# Options of the from-scratch backbones; set away from their defaults, llm refuses them.
_SHAPE = ("hidden_size", "layers", "heads", "intermediate_size", "dropout", "embedding_dropout", "item_token_dropout")
_ITEM_TOKEN_OPTIONS = {"item_head": "0", "item_token_dropout": "0", "item_token_init": "random", "embedding_dropout": "0"}


def pretrained_model(path: str, sizes: list[int], cfg: LLMBackboneConfig, seed: int, dtype: torch.dtype = torch.float32):
    """A pretrained causal LM with one new token per (level, code); LoRA when `cfg.lora_r` > 0.

    The new embedding rows start at the mean of the existing ones plus noise of their covariance
    (transformers' mean resizing), seeded: a neutral start that keeps the first logits sane. They are
    tied to the output layer and always trained; with LoRA they are PEFT's trainable token rows.
    Returns (model, vocab, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = attach(AutoModelForCausalLM.from_pretrained(path, dtype=dtype), LLM)
    base = model.get_input_embeddings().num_embeddings
    vocab = SIDVocab(tuple(sizes), base)
    torch.manual_seed(seed)
    model.resize_token_embeddings(vocab.size, mean_resizing=True)
    if cfg.lora_r:
        model = add_lora(model, cfg, list(range(base, vocab.size)))
    return model, vocab, tokenizer


def add_lora(model: torch.nn.Module, cfg: LLMBackboneConfig, sid_rows: list[int]) -> torch.nn.Module:
    """LoRA on the attention projections, with the SID token rows trained as PEFT trainable tokens (the
    wrapper reads the wrapped model's backbone, and merging gives that model back)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        trainable_token_indices={"embed_tokens": sid_rows},
    )
    return get_peft_model(model, lora)


class TextFormat:
    """Text prompts from versioned templates with SID tokens spliced in by id (the calls of `CompactFormat`)."""

    def __init__(self, tokenizer, vocab: SIDVocab, codes: np.ndarray, max_items: int, templates: dict[str, str],
                 windows_per_user: int):
        self.tokenizer, self.vocab, self.codes = tokenizer, vocab, codes
        self.max_items, self.templates, self.windows = max_items, templates, windows_per_user
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.item_weight = 0.0  # no item head on a pretrained LLM

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _sid(self, row: int) -> list[int]:
        return self.vocab.encode(self.codes[row]).tolist()

    def _optional(self, name: str, value: str | None) -> str:
        return self.templates[name].format(**{name.removesuffix("_line"): value}) if value else ""

    def prompt(self, rows: list[int], interests: str | None = None) -> list[int]:
        recent = rows[-self.max_items:]
        history = self.vocab.encode(self.codes[recent]).reshape(-1).tolist() if recent else []
        return render(self.templates["next_item"], self._encode, history=history,
                      interests_line=self._optional("interests_line", interests))

    def user_examples(self, rows: list[int], interests: str | None = None) -> list[Example]:
        targets = range(1, len(rows))
        if self.windows:
            targets = targets[-self.windows:]
        examples = []
        for t in targets:
            context = self.prompt(rows[:t], interests)
            examples.append(Example(context + self._sid(rows[t]), len(context)))
        return examples

    def item_examples(self, items: list[ItemText]) -> list[Example]:
        examples = []
        eos = [self.tokenizer.eos_token_id]
        for item in items:
            if not item.title:
                continue
            described = self._optional("descriptors_line", "; ".join(item.descriptors))
            context = render(self.templates["item_to_sid"], self._encode, title=item.title, descriptors_line=described)
            examples.append(Example(context + self._sid(item.row), len(context)))
            context = render(self.templates["sid_to_item"], self._encode, sid=self._sid(item.row))
            examples.append(Example(context + self._encode(" " + item.title) + eos, len(context)))
        return examples


class LLMBackbone(DecoderOnly):
    name = "llm"

    def check(self, cfg) -> None:
        defaults = type(cfg).model_construct()
        if cfg.item_tokens:
            # Every set option that llm refuses, so one message names all the keys to change (configs/default.yaml sets them all).
            also = " ".join(f"sft.{k}={v}" for k, v in _ITEM_TOKEN_OPTIONS.items() if getattr(cfg, k) != getattr(defaults, k))
            raise ValueError(f"sft.item_tokens applies only to the from-scratch backbones (compact, encoder_decoder), not {self.name}"
                             + (f" (set sft.item_tokens=false {also})" if also else ""))
        shape = [k for k in _SHAPE if getattr(cfg, k) != getattr(defaults, k)]
        if shape:
            raise ValueError(f"sft.{shape[0]} applies only to the from-scratch backbones (compact, encoder_decoder), not {self.name}")
        if cfg.item_head:
            raise ValueError(f"sft.item_head applies only to sft.backbone=compact, not {self.name}")

    def meta(self, cfg, sizes, items):
        from transformers import AutoConfig, AutoTokenizer

        from deepinterestgr.weights import resolve_llm

        path = resolve_llm(cfg.llm.model)
        meta = RecommenderMeta(self.name, list(sizes), AutoConfig.from_pretrained(path).vocab_size, cfg.max_items,
                               cfg.llm.template, cfg.llm.windows_per_user, members=cfg.members)
        return meta, AutoTokenizer.from_pretrained(path)

    def build(self, cfg, sizes, seed, gpu=False, items=0, item_rows=None):
        from deepinterestgr.weights import resolve_llm

        dtype = torch.bfloat16 if gpu and cfg.llm.bf16 else torch.float32
        return pretrained_model(resolve_llm(cfg.llm.model), sizes, cfg.llm, seed, dtype)

    def format(self, meta, codes, tokenizer=None):
        if tokenizer is None:
            raise ValueError("the llm backbone needs its tokenizer to build prompts")
        return TextFormat(tokenizer, meta.vocab, codes, meta.max_items, load_template(meta.template), meta.windows_per_user)

    def load_tokenizer(self, folder):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)

    def item_tasks(self, cfg) -> bool:
        return cfg.llm.item_tasks

    def labelled_logits(self, cfg) -> bool:
        return cfg.llm.labelled_logits

    def policy(self, model, cfg, vocab):
        """Fresh LoRA adapters on the merged SFT model (with `sft.llm.lora_r`), else the model itself."""
        return add_lora(model, cfg.llm, list(range(vocab.offset, vocab.size))) if cfg.llm.lora_r else model

    def autocast(self, cfg):
        if cfg.use_gpu and cfg.llm.bf16:
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext


LLM = LLMBackbone()
