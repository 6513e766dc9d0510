"""What every backbone of the recommender answers, and how a model finds its backbone.

A backbone (one module each beside this one) owns: which `sft` options apply to it, building an
untrained model, its prompt and training-example format, the training batch, and how it is called
for decoding (`prefill` / `step` for the beam search, `completion_logprobs` for GRPO). A model carries
its decoding (`attach`, done by `build` and by loading), so the beam search, GRPO, evaluate and the
server call `backbone_of(model)` and never ask which backbone, or whether an ensemble, they hold.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from deepinterestgr.recommender.prefix_attention import CrossCache, PrefixCache

IGNORE = -100
_ATTRIBUTE = "dig_backbone"


@dataclass
class DecodeState:
    """What a decoding step needs from the steps before: the shared cache and the prompt mask."""

    cache: PrefixCache | CrossCache
    mask: torch.Tensor


class Decoding:
    """How a model is called to rank and sample SIDs; a backbone's, or an ensemble's that sums its members'."""

    # Whether GRPO can tune the model (an ensemble's summed scores are not one distribution to sample from).
    tunable = True

    def prefill(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[object, torch.Tensor]:
        """Run left-padded prompts once; the state and the log-probabilities of the first SID token [B, V]."""
        raise NotImplementedError

    def step(self, model: torch.nn.Module, state, beam_index: torch.Tensor, tokens: torch.Tensor) -> tuple[object, torch.Tensor]:
        """Feed one token per beam (beam `beam_index[i]` is new beam i's parent); the new state and [N, V] log-probs."""
        raise NotImplementedError

    def completion_logits(self, model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor,
                          pad_id: int) -> torch.Tensor:
        """Teacher-forced logits [N, L + 1, V] for completions [N, L]: position i predicts completion token i,
        the last position the token after the completion."""
        raise NotImplementedError

    def completion_logprobs(self, model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor,
                            pad_id: int) -> torch.Tensor:
        """Log-probability of each completion token after its prompt: [N, L]."""
        steps = completions.shape[1]
        logprobs = torch.log_softmax(self.completion_logits(model, prompts, completions, pad_id)[:, :steps].float(), dim=-1)
        return logprobs.gather(2, completions.unsqueeze(-1)).squeeze(-1)


class Backbone(Decoding):
    """One `sft.backbone`: its options, model, format, training batch and decoding."""

    name: str = ""
    # Logits at position i predict token i + 1 (decoder-only); False where the model aligns them itself.
    shifts_labels = True
    # Whether `training_batch` packs several examples into a row (sft.pack_tokens).
    packs = False

    def labelled_logits(self, cfg) -> bool:
        """Whether training asks the model for logits only where a label follows (`sft_loss`)."""
        return False

    def check(self, cfg) -> None:
        """Refuse `sft` options (an `SFTConfig`) that do not apply to this backbone, naming the key (ValueError)."""

    def meta(self, cfg, sizes: list[int], items: int):
        """The `RecommenderMeta` and tokenizer (or None) of a model of this backbone, without its weights."""
        raise NotImplementedError

    def build(self, cfg, sizes: list[int], seed: int, gpu: bool = False, items: int = 0, item_rows: np.ndarray | None = None):
        """An untrained model with SID tokens, attached: (model, vocab, tokenizer or None); `items` = catalog rows
        (item tokens), `item_rows` = their content start (`model.content_rows`)."""
        raise NotImplementedError

    def format(self, meta, codes: np.ndarray, tokenizer=None):
        """The prompt and example format a model of this backbone was (or will be) trained with."""
        raise NotImplementedError

    def load(self, folder: str) -> torch.nn.Module:
        """A saved model folder of this backbone, for inference (its decoding attached)."""
        from transformers import AutoModelForCausalLM

        return attach(AutoModelForCausalLM.from_pretrained(folder).eval(), self)

    def load_tokenizer(self, folder: str):
        """The tokenizer saved with a model folder (None: this backbone has none)."""
        return None

    def item_tasks(self, cfg) -> bool:
        """Whether SFT adds the format's item-text examples (`format(...).item_examples`)."""
        return False

    def policy(self, model: torch.nn.Module, cfg, vocab) -> torch.nn.Module:
        """The trained SFT model made ready for GRPO to tune (e.g. fresh LoRA adapters)."""
        return model

    def autocast(self, cfg):
        """The context training and validation run in on a worker (e.g. bf16 on GPUs)."""
        return contextlib.nullcontext

    def training_batch(self, examples, pad_id: int, pack_tokens: int = 0) -> dict[str, torch.Tensor]:
        """Model inputs with labels (IGNORE where no loss) for a batch of SFT examples."""
        raise NotImplementedError


def attach(model: torch.nn.Module, decoding: Decoding) -> torch.nn.Module:
    """Mark how `model` is decoded (kept on the module object; returns it)."""
    object.__setattr__(unwrap(model), _ATTRIBUTE, decoding)
    return model


def backbone_of(model: torch.nn.Module) -> Decoding:
    """The decoding of a model built or loaded by this package (also when DDP- or PEFT-wrapped)."""
    decoding = getattr(unwrap(model), _ATTRIBUTE, None)
    if decoding is None:
        raise TypeError(f"{type(model).__name__} has no backbone attached: build it with a backbone's `build` or "
                        "load it with `artifacts.load_model`")
    return decoding


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (itself otherwise)."""
    return getattr(model, "module", model)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded token ids and attention mask, so every prompt ends at the last position."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
    return ids, mask


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and attention mask (masks from lengths: an LLM's pad token is often its EOS)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def cached_step(advance, model: torch.nn.Module, state: DecodeState, beam_index: torch.Tensor,
                tokens: torch.Tensor) -> tuple[DecodeState, torch.Tensor]:
    """One decoding step over a prompt cache shared by the prompt's beams (`prefix_attention`'s
    `prefix_step` or `cross_step` as `advance`). Beams are grouped by prompt, the same number per prompt
    (row b * W + p is prompt b's beam p); each new beam's parent is found within its prompt."""
    batch, before = len(state.mask), state.cache.beam_keys[0].shape[1]
    after = len(beam_index) // batch
    parents = beam_index.view(batch, after) - torch.arange(batch, device=beam_index.device)[:, None] * before
    cache, logits = advance(model, state.cache, parents, tokens.view(batch, after))
    return DecodeState(cache, state.mask), torch.log_softmax(logits.float(), dim=-1)
