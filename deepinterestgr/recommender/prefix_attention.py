"""Decoding steps that read each prompt's KV cache once for all of its beams (decoder-only backbones).

Copying the prompt cache to every beam (what `reorder_cache` does) holds it beam-width times: for long
prompts that is almost all of a beam search's memory. Here the prompt's keys and values stay as the
prefill left them, one row per prompt; only the few generated SID tokens are kept per beam. Attention
for a beam's new token is computed over both parts at once (one softmax), which is the same arithmetic
as attending over the concatenated cache. The step walks the Llama-family module tree (embed_tokens,
layers with input_layernorm / self_attn q,k,v,o_proj / post_attention_layernorm / mlp, norm, lm_head,
rotary_emb), which the compact backbone, SmolLM2 and Qwen2 share.
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
