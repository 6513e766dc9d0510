"""sft.backbone=encoder_decoder: a from-scratch T5 (TIGER's backbone). The encoder reads the history's SID
tokens once, bidirectionally; the decoder, started from the pad token (T5's convention), writes the next SID.
One training example per target (TIGER's sliding windows)."""

from __future__ import annotations

import torch

from deepinterestgr.recommender.backbones.base import IGNORE, Backbone, DecodeState, attach, cached_step, left_pad, right_pad
from deepinterestgr.recommender.backbones.compact import CompactFormat, CompactModelConfig, FromScratch
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.model import PAD, SEP, SPECIAL_TOKENS
from deepinterestgr.recommender.prefix_attention import CrossCache, cross_step
from deepinterestgr.recommender.vocab import SIDVocab


def encoder_decoder_model(sizes: list[int], cfg: CompactModelConfig, seed: int) -> tuple[torch.nn.Module, SIDVocab]:
    """A from-scratch T5 with the compact model's vocabulary. T5's relative position buckets make
    left-padded prompts equivalent to unpadded ones."""
    from transformers import T5Config, T5ForConditionalGeneration  # at use, as compact_model's (config validation)

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
    return attach(T5ForConditionalGeneration(config).eval(), ENCODER_DECODER), vocab


class EncoderDecoderFormat(CompactFormat):
    """The compact format's prompts for the encoder; one example per training target."""

    def user_examples(self, rows: list[int], interests: str | None = None) -> list[Example]:
        examples = []
        for t in range(1, len(rows)):
            context = self.prompt(rows[:t])
            examples.append(Example(context + self.vocab.encode(self.codes[rows[t]]).tolist(), len(context)))
        return examples


def _start_tokens(model: torch.nn.Module, rows: int, device) -> torch.Tensor:
    start = getattr(model, "module", model).config.decoder_start_token_id
    return torch.full((rows, 1), start, dtype=torch.long, device=device)


class EncoderDecoderBackbone(FromScratch, Backbone):
    name = "encoder_decoder"
    factory = staticmethod(encoder_decoder_model)
    format_class = EncoderDecoderFormat
    shifts_labels = False  # T5 shifts the labels into decoder inputs itself

    def check(self, cfg) -> None:
        super().check(cfg)
        if cfg.item_head:
            raise ValueError(f"sft.item_head applies only to sft.backbone=compact, not {self.name}")
        if cfg.pack_tokens and not self.packs:
            raise ValueError(f"sft.pack_tokens applies only to the decoder-only backbones (compact, llm), not {self.name}")

    def load(self, folder):
        from transformers import AutoModelForSeq2SeqLM

        return attach(AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), self)

    def prefill(self, model, ids, mask):
        encoder_states = getattr(model, "module", model).get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        cache = CrossCache.from_encoder(model, encoder_states, mask)
        parents = torch.zeros((len(ids), 1), dtype=torch.long, device=ids.device)
        cache, logits = cross_step(model, cache, parents, _start_tokens(model, len(ids), ids.device))
        return DecodeState(cache, mask), torch.log_softmax(logits.float(), dim=-1)

    def step(self, model, state, beam_index, tokens):
        return cached_step(cross_step, model, state, beam_index, tokens)

    def completion_logits(self, model, prompts, completions, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        device = completions.device
        decoder_ids = torch.cat([_start_tokens(model, len(ids), device), completions], dim=1)
        return model(input_ids=ids.to(device), attention_mask=mask.to(device), decoder_input_ids=decoder_ids).logits

    def training_batch(self, examples, pad_id, pack_tokens=0):
        """The context (ids before `loss_start`) goes to the encoder and the rest becomes the labels."""
        ids, mask = right_pad([e.ids[: e.loss_start] for e in examples], pad_id)
        labels, label_mask = right_pad([e.ids[e.loss_start:] for e in examples], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(label_mask == 0, IGNORE)}


ENCODER_DECODER = EncoderDecoderBackbone()
