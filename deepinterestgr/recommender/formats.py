"""How users and items become token sequences for each backbone: prompts for beam search, SFT examples.

Both formats expose the same three calls, so the trainer, the evaluator and the server never ask
which backbone they hold:
- `prompt(rows, interests)`: the tokens after which the next item's SID is generated;
- `user_examples(rows, interests)`: SFT examples from one user's training items;
- `item_examples(items)`: SFT examples that align item text with SIDs (empty for the compact model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from deepinterestgr.prompts import load_template, render
from deepinterestgr.recommender.model import PAD
from deepinterestgr.recommender.sequences import tokens, window_spans
from deepinterestgr.recommender.vocab import SIDVocab


META_FILE = "recommender.json"


@dataclass
class RecommenderMeta:
    """What a trained model folder needs besides its weights: how its prompts and SID tokens are built."""

    backbone: str
    sizes: list[int]
    vocab_offset: int
    max_items: int
    template: str | None = None
    windows_per_user: int = 0
    # Catalog rows with an item token of their own (sft.item_tokens; 0 = none): token `vocab.size + row`.
    item_tokens: int = 0
    # Weight of the item head's log-probability in every ranking (sft.item_head; 0 = SID log-probability only).
    item_weight: float = 0.0
    # Models in the folder (sft.members): the first in `model/`, member k in `model/members/<k>/`.
    members: int = 1

    @property
    def vocab(self) -> SIDVocab:
        return SIDVocab(tuple(self.sizes), self.vocab_offset)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "RecommenderMeta":
        return cls(**json.loads(raw))


def make_format(meta: RecommenderMeta, codes: np.ndarray, tokenizer=None):
    """The format a model was (or will be) trained with: compact, or text with the model's tokenizer."""
    if meta.backbone == "compact":
        return CompactFormat(meta.vocab, codes, meta.max_items, bool(meta.item_tokens), meta.item_weight)
    if meta.backbone == "encoder_decoder":
        return EncoderDecoderFormat(meta.vocab, codes, meta.max_items, bool(meta.item_tokens), meta.item_weight)
    if tokenizer is None:
        raise ValueError("the llm backbone needs its tokenizer to build prompts")
    return TextFormat(tokenizer, meta.vocab, codes, meta.max_items, load_template(meta.template), meta.windows_per_user)


@dataclass
class Example:
    """One SFT example: the loss covers tokens from `loss_start` on (earlier tokens are context), except
    tokens at or above `read_only_from` (item tokens: read, never generated; 0 = none)."""

    ids: list[int]
    loss_start: int
    read_only_from: int = 0


@dataclass
class ItemText:
    """What the item-alignment tasks read for one catalog row."""

    row: int
    title: str
    descriptors: list[str]


class CompactFormat:
    """BOS + SID tokens (+ an item token per item); one example covers every next-item target of a window at once.

    A user's training sequence is cut into windows of `max_items + 1` items (the last window ends at
    the last item; consecutive windows share one item, the context of the next window's first target),
    so every target is trained on and no prompt is longer than the model has positions for.
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


class EncoderDecoderFormat(CompactFormat):
    """The compact format's prompts for the encoder; one example per training target (TIGER's sliding windows)."""

    def user_examples(self, rows: list[int], interests: str | None = None) -> list[Example]:
        examples = []
        for t in range(1, len(rows)):
            context = self.prompt(rows[:t])
            examples.append(Example(context + self.vocab.encode(self.codes[rows[t]]).tolist(), len(context)))
        return examples


class TextFormat:
    """Text prompts from versioned templates with SID tokens spliced in by id (pretrained LLMs)."""

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
