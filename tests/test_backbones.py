"""The backbone registry: a fourth backbone is one class (here, in this file) and one `register` call;
models stored in the layout before uniform member folders still load."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from deepinterestgr.config import SFTConfig, load_config
from deepinterestgr.recommender import backbones
from deepinterestgr.recommender.artifacts import load_model, save_model
from deepinterestgr.recommender.backbones.base import backbone_of
from deepinterestgr.recommender.backbones.compact import CompactFormat, FromScratch
from deepinterestgr.recommender.backbones.decoder_only import DecoderOnly
from deepinterestgr.recommender.beam_search import beam_search, exhaustive_scores
from deepinterestgr.recommender.decoding import completion_logprobs
from deepinterestgr.recommender.ensemble import Ensemble
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.sft_loop import epoch_plan, epoch_seed, optimizer_and_schedule, train_epoch
from deepinterestgr.storage.runstore import RunStore
from deepinterestgr.tokenizer.sids import SIDTrie

SHAPE = dict(hidden_size=16, layers=1, heads=2, intermediate_size=32, max_items=4)


class NewestFirstFormat(CompactFormat):
    """The compact prompt with the history reversed (newest item first), one example per target."""

    def prompt(self, rows, interests=None):
        return super().prompt(list(reversed(rows[-self.max_items:])))

    def user_examples(self, rows, interests=None):
        return [Example(self.prompt(rows[:t]) + self.vocab.encode(self.codes[rows[t]]).tolist(), len(self.prompt(rows[:t])))
                for t in range(1, len(rows))]


class NewestFirst(FromScratch, DecoderOnly):
    """A toy fourth backbone: the compact model's weights, its own prompt format, no item tokens."""

    name = "newest_first"
    format_class = NewestFirstFormat

    def check(self, cfg):
        super().check(cfg)
        if cfg.item_tokens:
            raise ValueError(f"sft.item_tokens applies only to compact and encoder_decoder, not {self.name}")


@pytest.fixture()
def newest_first():
    backbones.register(NewestFirst())
    yield backbones.get("newest_first")
    del backbones.BACKBONES["newest_first"]


def _codes():
    return np.array([[a, b] for a in range(3) for b in range(4)])


def test_a_registered_toy_backbone_is_configured_trained_ranked_and_ensembled_with_a_tiny_random_model(newest_first):
    cfg = SFTConfig(backbone="newest_first", epochs=1, batch_size=4, **SHAPE)
    with pytest.raises(ValidationError, match="sft.item_tokens"):
        SFTConfig(backbone="newest_first", item_tokens=True, **SHAPE)
    codes, sizes = _codes(), [3, 4]
    meta, _ = newest_first.meta(cfg, sizes, len(codes))
    fmt = newest_first.format(meta, codes)
    assert fmt.prompt([0, 5]) == CompactFormat(meta.vocab, codes, 4).prompt([5, 0]), "its own format is used"
    rng = np.random.default_rng(0)
    histories = [rng.choice(len(codes), size=4).tolist() for _ in range(8)]
    examples = [e for rows in histories for e in fmt.user_examples(rows)]
    members = []
    for seed in (0, 1):
        model, vocab, _ = newest_first.build(cfg, sizes, seed)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer, scheduler = optimizer_and_schedule(model, cfg, len(epoch_plan(examples, np.arange(len(examples)), cfg, epoch_seed(seed, 0, 0))))
        stats = train_epoch(model, optimizer, scheduler, examples, np.arange(len(examples)), cfg, vocab, 0, epoch_seed(seed, 0, 0))
        assert np.isfinite(stats.loss) and any(not torch.equal(before[n], p) for n, p in model.named_parameters())
        members.append(model.eval())
    trie, prompts = SIDTrie.build(codes), [fmt.prompt(h) for h in histories[:3]]
    ensemble = Ensemble(members).eval()
    result = beam_search(ensemble, prompts, trie, vocab, beam_width=len(codes), top_k=len(codes))
    for row, prompt in enumerate(prompts):
        summed = sum(exhaustive_scores(m, prompt, codes, vocab) for m in members)
        assert result.items[row].tolist() == np.argsort(-summed, kind="stable").tolist()
    assert backbone_of(members[0]) is newest_first and backbone_of(members[0]).tunable and not backbone_of(ensemble).tunable
    with pytest.raises(TypeError, match="GRPO tunes one model"):
        backbone_of(ensemble).completion_logits(ensemble, prompts, torch.zeros((3, 2), dtype=torch.long), 0)
    completion = torch.tensor([vocab.encode(codes[1]).tolist()] * 3)
    assert torch.allclose(completion_logprobs(ensemble, prompts, completion, 0),
                          sum(completion_logprobs(m, prompts, completion, 0) for m in members))


def test_an_unknown_backbone_is_a_config_error_that_lists_the_known_ones():
    with pytest.raises(ValidationError, match="unknown backbone 'gru'.*compact, encoder_decoder, llm"):
        SFTConfig(backbone="gru")


def test_a_model_stored_before_uniform_member_folders_still_loads_with_a_tiny_random_model(tmp_path):
    cfg = load_config(None, [f"storage.uri={tmp_path}/run", *(f"sft.{k}={v}" for k, v in SHAPE.items())])
    store = RunStore(cfg)
    compact = backbones.get("compact")
    model, vocab, _ = compact.build(cfg.sft, [3, 4], seed=0)
    meta, _ = compact.meta(cfg.sft, [3, 4], 0)
    with store.stage("sft", "h", {}) as attempt:
        save_model(attempt, model, meta)
        attempt.commit({}, {})
    stage = Path(store.table_path("sft", "model"))
    assert (stage / "members" / "0" / "config.json").is_file() and (stage / "recommender.json").is_file()
    prompt, codes = [1, *vocab.encode(np.array([[0, 1]])).reshape(-1).tolist()], _codes()
    expected = exhaustive_scores(model, prompt, codes, vocab)
    for name in [p.name for p in (stage / "members" / "0").iterdir()]:  # the layout of runs before 2026-12
        shutil.move(stage / "members" / "0" / name, stage / name)
    shutil.rmtree(stage / "members")
    old = load_model(store, "sft")
    assert backbone_of(old) is compact
    assert np.allclose(exhaustive_scores(old, prompt, codes, vocab), expected, atol=1e-5)
