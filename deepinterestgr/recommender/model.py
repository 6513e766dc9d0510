"""The model factory: a compact Llama-style decoder or a T5 encoder-decoder built from a config, or a pretrained LLM; all with SID tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from deepinterestgr.config import LLMBackboneConfig, SFTConfig
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
    # Tokens after the SID vocabulary that are read, never generated (one per catalog item).
    item_tokens: int = 0


def compact_model(sizes: list[int], cfg: CompactModelConfig, seed: int) -> tuple[LlamaForCausalLM, SIDVocab]:
    """A from-scratch causal LM whose vocabulary is PAD/BOS/SEP plus one token per (level, code)."""
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
    return LlamaForCausalLM(config).eval(), vocab


def encoder_decoder_model(sizes: list[int], cfg: CompactModelConfig, seed: int) -> tuple[T5ForConditionalGeneration, SIDVocab]:
    """A from-scratch T5 (TIGER's backbone): the encoder reads the history's SID tokens, the decoder writes the next SID.

    Same vocabulary as the compact model; the decoder starts from PAD (T5's convention). T5's relative
    position buckets make left-padded prompts equivalent to unpadded ones.
    """
    vocab = SIDVocab(tuple(sizes), SPECIAL_TOKENS)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab.size + cfg.item_tokens,
        d_model=cfg.hidden_size,
        d_kv=cfg.hidden_size // cfg.heads,
        d_ff=cfg.intermediate_size,
        num_layers=cfg.layers,
        num_decoder_layers=cfg.layers,
        num_heads=cfg.heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="relu",
        relative_attention_max_distance=max(128, cfg.max_items * (len(sizes) + bool(cfg.item_tokens))),
        pad_token_id=PAD,
        decoder_start_token_id=PAD,
        eos_token_id=SEP,
        tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(config).eval(), vocab


def pretrained_model(path: str, sizes: list[int], cfg: LLMBackboneConfig, seed: int, dtype: torch.dtype = torch.float32):
    """A pretrained causal LM with one new token per (level, code); LoRA when `cfg.lora_r` > 0.

    The new embedding rows start at the mean of the existing ones plus noise of their covariance
    (transformers' mean resizing), seeded: a neutral start that keeps the first logits sane. They are
    tied to the output layer and always trained; with LoRA they are PEFT's trainable token rows.
    Returns (model, vocab, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    base = model.get_input_embeddings().num_embeddings
    vocab = SIDVocab(tuple(sizes), base)
    torch.manual_seed(seed)
    model.resize_token_embeddings(vocab.size, mean_resizing=True)
    if cfg.lora_r:
        model = add_lora(model, cfg, list(range(base, vocab.size)))
    return model, vocab, tokenizer


def add_lora(model: torch.nn.Module, cfg: LLMBackboneConfig, sid_rows: list[int]) -> torch.nn.Module:
    """LoRA on the attention projections, with the SID token rows trained as PEFT trainable tokens."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        trainable_token_indices={"embed_tokens": sid_rows},
    )
    return get_peft_model(model, lora)


def _start_items_from_content(model: torch.nn.Module, vocab: SIDVocab, items: int, item_rows: np.ndarray | None) -> None:
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
    eigen-solver, scaled to unit overall standard deviation (`build_model` rescales to the model's rows).
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


def build_model(cfg: SFTConfig, sizes: list[int], seed: int, gpu: bool = False, items: int = 0,
                item_rows: np.ndarray | None = None):
    """The configured backbone, untrained: (model, vocab, tokenizer or None); `items` = catalog rows (for
    item tokens); `item_rows` = `content_rows` of the catalog, which `sft.item_token_init=content` needs."""
    if cfg.backbone != "llm":
        shape = CompactModelConfig(cfg.hidden_size, cfg.layers, cfg.heads, cfg.intermediate_size, cfg.dropout, cfg.max_items + 1,
                                   items if cfg.item_tokens else 0)
        factory = compact_model if cfg.backbone == "compact" else encoder_decoder_model
        model, vocab = factory(sizes, shape, seed)
        if cfg.item_token_init == "content":  # the config refuses it without item tokens
            _start_items_from_content(model, vocab, items, item_rows)
        if cfg.embedding_dropout:
            add_embedding_dropout(model, cfg.embedding_dropout)
        return model, vocab, None
    from deepinterestgr.weights import resolve_llm

    dtype = torch.bfloat16 if gpu and cfg.llm.bf16 else torch.float32
    return pretrained_model(resolve_llm(cfg.llm.model), sizes, cfg.llm, seed, dtype)
