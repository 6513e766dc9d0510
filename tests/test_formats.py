"""Prompt formats of every backbone; the text format with SmolLM2's real tokenizer and templates."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from deepinterestgr.prompts import load_template
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.backbones.compact import CompactFormat
from deepinterestgr.recommender.formats import ItemText, RecommenderMeta
from deepinterestgr.recommender.model import BOS, SPECIAL_TOKENS
from deepinterestgr.recommender.vocab import SIDVocab

CODES = np.array([[0, 1], [2, 3], [1, 0], [3, 3]])


def test_compact_format_covers_every_target_once_in_windows_the_model_has_positions_for():
    vocab = SIDVocab((4, 4), SPECIAL_TOKENS)
    codes = np.array([[i % 4, i // 4] for i in range(8)])
    fmt = CompactFormat(vocab, codes, max_items=3)
    (example,) = fmt.user_examples([0, 1, 2, 3])
    assert example.ids == [BOS, *vocab.encode(codes[[0, 1, 2, 3]]).reshape(-1).tolist()] and example.loss_start == 1
    first, second = fmt.user_examples(list(range(7)))
    assert first.ids == [BOS, *vocab.encode(codes[[0, 1, 2, 3]]).reshape(-1).tolist()]
    assert second.ids == [BOS, *vocab.encode(codes[[3, 4, 5, 6]]).reshape(-1).tolist()], "item 3 is context for target 4"
    assert fmt.user_examples([2]) == [], "one item has no next-item target"
    assert fmt.item_examples([ItemText(0, "title", [])]) == []


def test_item_tokens_follow_each_items_sid_after_the_sid_vocabulary_in_prompts_and_examples():
    vocab = SIDVocab((4, 4), SPECIAL_TOKENS)
    codes = np.array([[i % 4, i // 4] for i in range(8)])
    def item(row):
        return [*vocab.encode(codes[row]).tolist(), vocab.size + row]

    compact = backbones.get("compact").format(RecommenderMeta("compact", [4, 4], SPECIAL_TOKENS, max_items=2, item_tokens=8), codes)
    assert compact.prompt([5, 6, 7]) == [BOS, *item(6), *item(7)]
    assert [e.ids for e in compact.user_examples([5, 6, 7, 1])] == [[BOS, *item(5), *item(6)], [BOS, *item(6), *item(7), *item(1)]]
    assert all(e.read_only_from == vocab.size for e in compact.user_examples([5, 6, 7, 1])), "item tokens are never targets"
    encdec = backbones.get("encoder_decoder").format(RecommenderMeta("encoder_decoder", [4, 4], SPECIAL_TOKENS, max_items=2, item_tokens=8), codes)
    last = encdec.user_examples([5, 6, 7, 1])[-1]
    assert last.ids[: last.loss_start] == [BOS, *item(6), *item(7)]
    assert last.ids[last.loss_start:] == vocab.encode(codes[1]).tolist(), "the decoder generates the SID alone"
    plain = backbones.get("compact").format(RecommenderMeta("compact", [4, 4], SPECIAL_TOKENS, max_items=2), codes)
    assert plain.prompt([6, 7]) == [BOS, *item(6)[:-1], *item(7)[:-1]]


def test_encoder_decoder_format_has_one_example_per_target_with_the_history_as_context():
    vocab = SIDVocab((4, 4), SPECIAL_TOKENS)
    codes = np.array([[i % 4, i // 4] for i in range(8)])
    fmt = backbones.get("encoder_decoder").format(RecommenderMeta("encoder_decoder", [4, 4], SPECIAL_TOKENS, max_items=2), codes)
    examples = fmt.user_examples([5, 6, 7, 1])
    assert len(examples) == 3
    last = examples[-1]
    assert last.ids[: last.loss_start] == fmt.prompt([5, 6, 7]) == [BOS, *vocab.encode(codes[[6, 7]]).reshape(-1).tolist()]
    assert last.ids[last.loss_start:] == vocab.encode(codes[1]).tolist(), "the target SID is what the decoder learns"


@pytest.fixture(scope="module")
def text_format(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    meta = RecommenderMeta("llm", [4, 4], len(tokenizer), max_items=2, template="sft_v1", windows_per_user=2)
    return backbones.get(meta.backbone).format(meta, CODES, tokenizer), tokenizer


def test_text_prompt_splices_the_recent_sids_by_id_and_optional_interests(text_format):
    fmt, tokenizer = text_format
    offset = len(tokenizer)
    prompt = fmt.prompt([0, 1, 2])
    sid_tokens = [t for t in prompt if t >= offset]
    assert sid_tokens == fmt.vocab.encode(CODES[[1, 2]]).reshape(-1).tolist(), "last 2 items, oldest first"
    text = tokenizer.decode([t for t in prompt if t < offset])
    assert text.startswith("A shopper bought") and text.endswith("The next item they buy is:")
    assert "What they care about" not in text
    with_interests = tokenizer.decode([t for t in fmt.prompt([0, 1, 2], "quiet mornings") if t < offset])
    assert "What they care about: quiet mornings" in with_interests


def test_text_user_examples_put_the_loss_on_the_target_sid_only(text_format):
    fmt, _ = text_format
    examples = fmt.user_examples([0, 1, 2, 3])
    assert len(examples) == 2, "windows_per_user=2: the last two targets"
    for example, target in zip(examples, [2, 3]):
        assert example.ids[example.loss_start:] == fmt.vocab.encode(CODES[target]).tolist()
    assert examples[-1].ids[: examples[-1].loss_start] == fmt.prompt([0, 1, 2])


def test_text_item_examples_align_titles_and_sids_both_ways(text_format):
    fmt, tokenizer = text_format
    to_sid, to_title = fmt.item_examples([ItemText(1, "Blue stapler", ["desk order"]), ItemText(2, "", [])])[:2]
    assert len(fmt.item_examples([ItemText(2, "", [])])) == 0, "items without a title are skipped"
    assert to_sid.ids[to_sid.loss_start:] == fmt.vocab.encode(CODES[1]).tolist()
    assert "Bought for: desk order" in tokenizer.decode(to_sid.ids[: to_sid.loss_start])
    answer = to_title.ids[to_title.loss_start:]
    assert answer[-1] == tokenizer.eos_token_id and tokenizer.decode(answer[:-1]).strip() == "Blue stapler"


def test_unknown_template_version_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known: .*sft_v1"):
        load_template("sft_v0")
