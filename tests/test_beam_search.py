"""Our constrained beam search against exhaustive scoring, on tiny randomly initialised models of both from-scratch backbones."""

import numpy as np
import torch
import pytest

from deepinterestgr.recommender.beam_search import beam_search, exhaustive_scores
from deepinterestgr.recommender.decoding import left_pad, prefill, step
from deepinterestgr.recommender.ensemble import Ensemble
from deepinterestgr.recommender.backbones.base import attach
from deepinterestgr.recommender.backbones.compact import COMPACT, CompactModelConfig, compact_model
from deepinterestgr.recommender.backbones.encoder_decoder import encoder_decoder_model
from deepinterestgr.recommender.model import BOS
from deepinterestgr.recommender.sequences import tokens
from deepinterestgr.tokenizer.sids import SIDTrie


def _catalog(n=60, sizes=(4, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    codes = set()
    while len(codes) < n:
        codes.add(tuple(int(rng.integers(s)) for s in sizes))
    return np.array(sorted(codes))


def _grouped_query_model(sizes, cfg, seed):
    """A SmolLM2-like decoder: fewer key/value heads than query heads (the prompt cache is shared per group)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, vocab = compact_model(sizes, cfg, seed)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab.size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return attach(LlamaForCausalLM(config).eval(), COMPACT), vocab


@pytest.fixture(scope="module", params=[compact_model, _grouped_query_model, encoder_decoder_model],
                ids=["decoder_only", "grouped_query", "encoder_decoder"])
def tiny_random_model(request):
    codes = _catalog()
    model, vocab = request.param([4, 5, 6], CompactModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64), seed=0)
    return model, vocab, codes, SIDTrie.build(codes)


def _prompts(vocab, codes, rng, users=5):
    prompts = []
    for _ in range(users):
        history = codes[rng.choice(len(codes), size=int(rng.integers(1, 5)))]
        prompts.append([BOS] + vocab.encode(history).reshape(-1).tolist())
    return prompts


def test_full_width_beam_equals_exhaustive_ranking(tiny_random_model):
    model, vocab, codes, trie = tiny_random_model
    prompts = _prompts(vocab, codes, np.random.default_rng(1))
    result = beam_search(model, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes))
    for row, prompt in enumerate(prompts):
        reference = exhaustive_scores(model, prompt, codes, vocab)
        order = np.argsort(-reference, kind="stable")
        assert result.items[row].tolist() == order.tolist()
        np.testing.assert_allclose(result.scores[row], reference[order], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory", [compact_model, encoder_decoder_model], ids=["decoder_only", "encoder_decoder"])
def test_full_width_beam_equals_exhaustive_ranking_with_item_tokens_in_the_prompt(factory):
    codes = _catalog(n=30)
    cfg = CompactModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, item_tokens=len(codes))
    model, vocab = factory([4, 5, 6], cfg, seed=0)
    assert model.config.vocab_size == vocab.size + len(codes)
    rng = np.random.default_rng(3)
    prompts = [tokens(rng.choice(len(codes), size=3).tolist(), codes, vocab, 0, item_tokens=True) for _ in range(4)]
    assert all(max(p) >= vocab.size for p in prompts), "the prompts read item tokens"
    result = beam_search(model, prompts, SIDTrie.build(codes), vocab, beam_width=len(codes), top_k=len(codes))
    for row, prompt in enumerate(prompts):
        reference = exhaustive_scores(model, prompt, codes, vocab)
        assert result.items[row].tolist() == np.argsort(-reference, kind="stable").tolist()


def test_narrow_beam_returns_distinct_valid_items_in_score_order(tiny_random_model):
    model, vocab, codes, trie = tiny_random_model
    prompts = _prompts(vocab, codes, np.random.default_rng(2), users=8)
    result = beam_search(model, prompts, trie, vocab, beam_width=10, top_k=10)
    assert result.items.shape == (8, 10)
    for items, scores in zip(result.items, result.scores):
        assert len(set(items.tolist())) == 10 and (items >= 0).all()
        assert (np.diff(scores) <= 1e-6).all()
    exact = beam_search(model, prompts, trie, vocab, beam_width=len(codes), top_k=1)
    assert (result.scores[:, 0] <= exact.scores[:, 0] + 1e-5).all()


def test_beam_wider_than_the_catalog_pads_with_minus_one():
    codes = _catalog(n=5, sizes=(2, 3, 2))
    model, vocab = compact_model([2, 3, 2], CompactModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32), seed=0)
    result = beam_search(model, [[BOS]], SIDTrie.build(codes), vocab, beam_width=8, top_k=8)
    assert sorted(result.items[0][:5].tolist()) == list(range(5))
    assert result.items[0][5:].tolist() == [-1, -1, -1]


def test_top_k_above_beam_width_is_an_error(tiny_random_model):
    model, vocab, codes, trie = tiny_random_model
    with pytest.raises(ValueError, match="top_k"):
        beam_search(model, [[BOS]], trie, vocab, beam_width=3, top_k=5)


def test_item_nodes_lead_to_each_item():
    codes = _catalog()
    trie = SIDTrie.build(codes)
    for row, code in enumerate(codes):
        node = 0
        for level, value in enumerate(code):
            assert trie.item_nodes[level][row] == node
            node = int(trie.children(level, torch.tensor([node]))[0, value])
        assert node == row


def test_excluded_items_are_never_returned_and_the_rest_keep_their_exact_order(tiny_random_model):
    model, vocab, codes, trie = tiny_random_model
    rng = np.random.default_rng(3)
    prompts = _prompts(vocab, codes, rng)
    full = beam_search(model, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes))
    # each user excludes their 15 best items plus whole subtrees (every item under some first code)
    exclude = [list(items[:15]) + np.flatnonzero(codes[:, 0] == b % 4).tolist() for b, items in enumerate(full.items)]
    narrow = beam_search(model, prompts, trie, vocab, beam_width=5, top_k=5, exclude=exclude)
    wide = beam_search(model, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes), exclude=exclude)
    for b in range(len(prompts)):
        left = [int(i) for i in full.items[b] if i not in set(exclude[b])]
        assert wide.items[b][: len(left)].tolist() == left and (wide.items[b][len(left):] == -1).all()
        assert (narrow.items[b] >= 0).all() and not set(narrow.items[b].tolist()) & set(exclude[b])
        assert narrow.scores[b, 0] <= wide.scores[b, 0] + 1e-5


def test_each_prompt_cache_is_held_once_whatever_the_beam_width(tiny_random_model):
    model, vocab, codes, _ = tiny_random_model
    prompts = [[BOS] + vocab.encode(codes[:12]).reshape(-1).tolist()] * 3  # 37-token prompts
    ids, mask = left_pad(prompts, 0)
    state, _ = prefill(model, ids, mask)
    prompt_bytes = state.cache.nbytes()
    width = 16
    state, logprobs = step(model, state, torch.arange(3).repeat_interleave(width), torch.full((3 * width, 1), int(vocab.starts[0])))
    assert logprobs.shape == (3 * width, model.config.vocab_size)
    assert state.cache.keys[0].shape[0] == 3, "one prompt row per prompt, not per beam"
    assert state.cache.nbytes() < prompt_bytes * width / 4


def _item_head_model(n=30):
    codes = _catalog(n=n)
    cfg = CompactModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, item_tokens=len(codes))
    model, vocab = compact_model([4, 5, 6], cfg, seed=0)
    rng = np.random.default_rng(5)
    prompts = [tokens(rng.choice(len(codes), size=3).tolist(), codes, vocab, 0, item_tokens=True) for _ in range(4)]
    return model, vocab, codes, SIDTrie.build(codes), prompts


def _item_head_reference(model, vocab, prompt, items):
    """The item head's log-probabilities after one prompt, from the raw logits (not from beam_search's helper)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    return torch.log_softmax(logits[vocab.size: vocab.size + items], dim=0).numpy()


def test_full_width_beam_with_item_weight_equals_exhaustive_sid_plus_weighted_item_head():
    model, vocab, codes, trie, prompts = _item_head_model()
    result = beam_search(model, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes), item_weight=2.0)
    plain = beam_search(model, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes))
    for row, prompt in enumerate(prompts):
        reference = exhaustive_scores(model, prompt, codes, vocab) + 2.0 * _item_head_reference(model, vocab, prompt, len(codes))
        order = np.argsort(-reference, kind="stable")
        assert result.items[row].tolist() == order.tolist()
        np.testing.assert_allclose(result.scores[row], reference[order], rtol=1e-4, atol=1e-4)
    assert (result.items != plain.items).any(), "the item head changes the ranking"


def test_narrow_beam_with_item_weight_keeps_the_head_favourite_and_honours_exclusions():
    model, vocab, codes, trie, prompts = _item_head_model()
    # a weight so large that the head decides: the bound lets its favourite survive a beam of 3
    result = beam_search(model, prompts, trie, vocab, beam_width=3, top_k=3, item_weight=1000.0)
    favourites = [int(np.argmax(_item_head_reference(model, vocab, p, len(codes)))) for p in prompts]
    assert result.items[:, 0].tolist() == favourites
    excluded = beam_search(model, prompts, trie, vocab, beam_width=3, top_k=3, item_weight=1000.0,
                           exclude=[[f] for f in favourites])
    assert all(f not in items for f, items in zip(favourites, excluded.items.tolist()))
    assert (excluded.items >= 0).all()


def test_item_weight_on_a_model_without_item_tokens_names_the_option():
    codes = _catalog(n=10)
    model, vocab = compact_model([4, 5, 6], CompactModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32), seed=0)
    trie = SIDTrie.build(codes)
    with pytest.raises(ValueError, match="sft.item_tokens=true"):
        beam_search(model, [[BOS]], trie, vocab, beam_width=3, top_k=3, item_weight=1.0)


@pytest.mark.parametrize("factory, weight", [(compact_model, 2.0), (encoder_decoder_model, 0.0)],
                         ids=["decoder_only_item_head", "encoder_decoder"])
def test_full_width_beam_of_an_ensemble_ranks_by_the_sum_of_its_members_scores(factory, weight):
    """Two tiny random members: the ensemble's beam covering the catalog equals the members' own scores summed."""
    codes = _catalog(n=30)
    cfg = CompactModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, item_tokens=len(codes))
    members = [factory([4, 5, 6], cfg, seed=seed)[0] for seed in (0, 1)]
    vocab = factory([4, 5, 6], cfg, seed=0)[1]
    ensemble, trie = Ensemble(members).eval(), SIDTrie.build(codes)
    rng = np.random.default_rng(7)
    prompts = [tokens(rng.choice(len(codes), size=3).tolist(), codes, vocab, 0, item_tokens=True) for _ in range(4)]
    result = beam_search(ensemble, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes), item_weight=weight)
    first = beam_search(members[0], prompts, trie, vocab, beam_width=len(codes), top_k=len(codes), item_weight=weight)
    for row, prompt in enumerate(prompts):
        sid = [exhaustive_scores(m, prompt, codes, vocab) for m in members]
        np.testing.assert_allclose(exhaustive_scores(ensemble, prompt, codes, vocab), sum(sid), rtol=1e-5, atol=1e-5)
        heads = sum(_item_head_reference(m, vocab, prompt, len(codes)) for m in members) if weight else np.zeros(len(codes))
        summed = sum(sid) + weight * heads
        order = np.argsort(-summed, kind="stable")
        assert result.items[row].tolist() == order.tolist()
        # the members' heads multiplied and renormalised: each user's scores shift by one constant
        renormalised = sum(sid) + weight * (heads - np.logaddexp.reduce(heads)) if weight else summed
        np.testing.assert_allclose(result.scores[row], renormalised[order], rtol=1e-4, atol=1e-4)
    assert (result.items != first.items).any(), "the second member changes the ranking"


def test_an_ensemble_refuses_one_member_and_mixed_vocabularies():
    cfg = CompactModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32)
    one, _ = compact_model([4, 5, 6], cfg, seed=0)
    other, _ = compact_model([4, 5], cfg, seed=0)
    with pytest.raises(ValueError, match="at least two members"):
        Ensemble([one])
    with pytest.raises(ValueError, match="share one vocabulary"):
        Ensemble([one, other])
