"""Decoding steps that read each prompt's cache once for all of its beams.

Copying the prompt cache to every beam (what `reorder_cache` does) holds it beam-width times: for long
prompts that is almost all of a beam search's memory. Here the prompt's keys and values stay one row
per prompt; only the few generated SID tokens are kept per beam.

Decoder-only (`PrefixCache`, `prefix_step`): the prefill's keys and values are the shared part, and a
beam's new token attends over them and over its own tokens at once (one softmax), the same arithmetic
as attending over the concatenated cache. The step walks the Llama-family module tree (embed_tokens,
layers with input_layernorm / self_attn q,k,v,o_proj / post_attention_layernorm / mlp, norm, lm_head,
rotary_emb), which the compact backbone, SmolLM2 and Qwen2 share.

Encoder-decoder (`CrossCache`, `cross_step`): the encoder runs once per prompt and every decoder
layer's cross-attention keys/values are projected from its states once; beams keep only their decoder
self-attention keys/values. The step walks T5's module tree (decoder blocks of self-attention with
relative position bias, cross-attention, feed-forward; final_layer_norm; lm_head).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch


@dataclass
class PrefixCache:
    """Prompt keys/values per layer [B, Hkv, T, D], their mask [B, T], and the beams' own tokens'
    keys/values per layer [B, W, Hkv, L, D] (L generated tokens so far), with the next position ids [B]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    beam_keys: list[torch.Tensor]
    beam_values: list[torch.Tensor]
    next_position: torch.Tensor

    @classmethod
    def from_prefill(cls, cache, mask: torch.Tensor) -> PrefixCache:
        """Take the prefill's DynamicCache as the shared prompt part (no copy); no beams yet (W = 1, L = 0)."""
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        empty = [k.new_zeros((k.shape[0], 1, k.shape[1], 0, k.shape[3])) for k in keys]
        return cls(keys, values, mask, empty, [e.clone() for e in empty], mask.sum(dim=1))

    def nbytes(self) -> int:
        """Bytes of keys and values held (prompt part once, plus every beam's own tokens)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *self.beam_keys, *self.beam_values))


def _attend(query: torch.Tensor, cache: PrefixCache, layer: int, scale: float) -> torch.Tensor:
    """query [B, W, Hkv, g, D] over the prompt (shared per b) and the beam's own keys -> [B, W, Hkv, g, D]."""
    prompt_scores = torch.einsum("bwkgd,bktd->bwkgt", query, cache.keys[layer]) * scale
    prompt_scores = prompt_scores.masked_fill(~cache.mask.bool()[:, None, None, None, :], float("-inf"))
    own_scores = torch.einsum("bwkgd,bwkld->bwkgl", query, cache.beam_keys[layer]) * scale
    probs = torch.softmax(torch.cat([prompt_scores, own_scores], dim=-1).float(), dim=-1).to(query.dtype)
    width = prompt_scores.shape[-1]
    return (torch.einsum("bwkgt,bktd->bwkgd", probs[..., :width], cache.values[layer])
            + torch.einsum("bwkgl,bwkld->bwkgd", probs[..., width:], cache.beam_values[layer]))


def prefix_step(model: torch.nn.Module, cache: PrefixCache, parents: torch.Tensor, tokens: torch.Tensor) -> tuple[PrefixCache, torch.Tensor]:
    """Feed one token per new beam: `parents` [B, W'] picks each new beam's parent among the previous W
    beams of the same prompt, `tokens` [B, W'] its token. Returns the cache and logits [B * W', V]."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft (LoRA): its layers are patched in place, the tree is the base model's
        model = model.get_base_model()
    inner = model.model
    batch, width = tokens.shape
    beam_keys = [k.gather(1, parents[:, :, None, None, None].expand(-1, -1, *k.shape[2:])) for k in cache.beam_keys]
    beam_values = [v.gather(1, parents[:, :, None, None, None].expand(-1, -1, *v.shape[2:])) for v in cache.beam_values]
    steps = beam_keys[0].shape[3]
    positions = (cache.next_position + steps)[:, None].expand(batch, width).reshape(-1, 1)
    hidden = inner.embed_tokens(tokens.reshape(-1, 1))  # [N, 1, hidden]
    cos, sin = inner.rotary_emb(hidden, positions)
    cache = PrefixCache(cache.keys, cache.values, cache.mask, beam_keys, beam_values, cache.next_position)
    for index, layer in enumerate(inner.layers):
        attention = layer.self_attn
        rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        x = layer.input_layernorm(hidden)
        head_dim = attention.head_dim
        query = attention.q_proj(x).view(batch * width, 1, -1, head_dim).transpose(1, 2)
        key = attention.k_proj(x).view(batch * width, 1, -1, head_dim).transpose(1, 2)
        value = attention.v_proj(x).view(batch * width, 1, -1, head_dim).transpose(1, 2)
        query, key = rotate(query, key, cos, sin)  # [N, H, 1, D], [N, Hkv, 1, D]
        kv_heads = key.shape[1]
        cache.beam_keys[index] = torch.cat([beam_keys[index], key.view(batch, width, kv_heads, 1, head_dim)], dim=3)
        cache.beam_values[index] = torch.cat([beam_values[index], value.view(batch, width, kv_heads, 1, head_dim)], dim=3)
        grouped = query.view(batch, width, kv_heads, query.shape[1] // kv_heads, head_dim)
        out = _attend(grouped, cache, index, attention.scaling).reshape(batch * width, 1, -1)
        hidden = hidden + attention.o_proj(out)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    logits = model.lm_head(inner.norm(hidden))[:, -1]
    return cache, logits


@dataclass
class CrossCache:
    """Per prompt, cross-attention keys/values per decoder layer [B, H, S, D] and the encoder mask [B, S];
    per beam, decoder self-attention keys/values per layer [B, W, H, L, D] (L decoder tokens so far)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    beam_keys: list[torch.Tensor]
    beam_values: list[torch.Tensor]

    @classmethod
    def from_encoder(cls, model: torch.nn.Module, encoder_states: torch.Tensor, mask: torch.Tensor) -> CrossCache:
        """Project the encoder states once for every decoder layer; no beams yet (W = 1, L = 0)."""
        batch, length, _ = encoder_states.shape
        keys, values = [], []
        for block in getattr(model, "module", model).get_decoder().block:
            attention = block.layer[1].EncDecAttention
            shape = (batch, length, attention.n_heads, attention.key_value_proj_dim)
            keys.append(attention.k(encoder_states).view(shape).transpose(1, 2))
            values.append(attention.v(encoder_states).view(shape).transpose(1, 2))
        empty = [k.new_zeros((batch, 1, k.shape[1], 0, k.shape[3])) for k in keys]
        return cls(keys, values, mask, empty, [e.clone() for e in empty])

    def nbytes(self) -> int:
        """Bytes of keys and values held (cross-attention once per prompt, plus every beam's own tokens)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *self.beam_keys, *self.beam_values))


def cross_step(model: torch.nn.Module, cache: CrossCache, parents: torch.Tensor, tokens: torch.Tensor) -> tuple[CrossCache, torch.Tensor]:
    """Feed one decoder token per new beam (`parents` [B, W'] within the prompt, `tokens` [B, W']);
    returns the cache and logits [B * W', V]. T5 attention is unscaled (folded into its initialisation)."""
    model = getattr(model, "module", model)
    decoder = model.get_decoder()
    batch, width = tokens.shape
    beam_keys = [k.gather(1, parents[:, :, None, None, None].expand(-1, -1, *k.shape[2:])) for k in cache.beam_keys]
    beam_values = [v.gather(1, parents[:, :, None, None, None].expand(-1, -1, *v.shape[2:])) for v in cache.beam_values]
    steps = beam_keys[0].shape[3]
    hidden = decoder.embed_tokens(tokens.reshape(-1, 1))  # [N, 1, d_model]
    first = decoder.block[0].layer[0].SelfAttention
    # The relative position bias of the new token (position `steps`) against positions 0..steps, shared by all layers.
    bias = first.compute_bias(1, steps + 1, device=hidden.device, past_seen_tokens=steps)[0, :, 0]  # [H, L + 1]
    cross_masked = ~cache.mask.bool()[:, None, None, :]
    cache = CrossCache(cache.keys, cache.values, cache.mask, beam_keys, beam_values)
    for index, block in enumerate(decoder.block):
        attention = block.layer[0].SelfAttention
        heads, head_dim = attention.n_heads, attention.key_value_proj_dim
        x = block.layer[0].layer_norm(hidden)
        query, key, value = (proj(x).view(batch, width, heads, 1, head_dim) for proj in (attention.q, attention.k, attention.v))
        cache.beam_keys[index] = torch.cat([beam_keys[index], key], dim=3)
        cache.beam_values[index] = torch.cat([beam_values[index], value], dim=3)
        scores = torch.einsum("bwhqd,bwhld->bwhl", query, cache.beam_keys[index]) + bias
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        out = torch.einsum("bwhl,bwhld->bwhd", probs, cache.beam_values[index]).reshape(batch * width, 1, -1)
        hidden = hidden + attention.o(out)
        attention = block.layer[1].EncDecAttention
        query = attention.q(block.layer[1].layer_norm(hidden)).view(batch, width, heads, head_dim)
        scores = torch.einsum("bwhd,bhsd->bwhs", query, cache.keys[index]).masked_fill(cross_masked, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        out = torch.einsum("bwhs,bhsd->bwhd", probs, cache.values[index]).reshape(batch * width, 1, -1)
        hidden = block.layer[2](hidden + attention.o(out))
    hidden = decoder.final_layer_norm(hidden)
    if model.config.scale_decoder_outputs:
        hidden = hidden * model.model_dim**-0.5
    return cache, model.lm_head(hidden)[:, -1]
