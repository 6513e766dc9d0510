"""GRPO: reward terms on hand-made cases, the objective on a tiny randomly initialised model, the stage on 2 workers, resume."""

import math

import numpy as np
import pytest
import torch

from conftest import TINY_RUN, copy_of_tiny_run
from deepinterestgr.config import GRPOConfig, load_config
from deepinterestgr.recommender.decoding import completion_logprobs
from deepinterestgr.recommender.grpo import group_advantages, grpo_loss
from deepinterestgr.recommender.backbones.compact import CompactModelConfig, compact_model
from deepinterestgr.recommender.backbones.encoder_decoder import encoder_decoder_model
from deepinterestgr.recommender.model import BOS, PAD
from deepinterestgr.recommender.reward import reward_terms
from ray_jobs import evaluate, grpo

CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])


def test_reward_terms_on_hand_made_groups():
    cfg = GRPOConfig(l_valid=0.1, l_pref=0.5, l_q=0.5, l_rank=0.0)
    terms = reward_terms(np.array([1, 0, 3, -1]), target=1, codes=CODES, q_target=0.8, cfg=cfg)
    assert terms["hit"].tolist() == [1, 0, 0, 0]
    assert terms["valid"].tolist() == [1, 1, 1, 0]
    assert terms["prefix"].tolist() == [1.0, 0.5, 0.0, 0.0], "LCP/levels: [0,1] vs [0,0] share one level, [1,1] none"
    assert terms["quality"].tolist() == [0.8, 0, 0, 0]
    assert terms["total"] == pytest.approx([1 + 0.1 + 0.5 + 0.4, 0.1 + 0.25, 0.1, 0.0])

    ranked = reward_terms(np.array([2, 1, 0, 3]), target=1, codes=CODES, q_target=0.0, cfg=GRPOConfig(l_rank=1.0))
    assert ranked["rank"] == pytest.approx([-1.0, 0.0, -1 / math.log2(4), -1 / math.log2(5)])
    missed = reward_terms(np.array([0, 2]), target=1, codes=CODES, q_target=0.0, cfg=GRPOConfig(l_rank=1.0))
    assert missed["rank"].tolist() == [0.0, 0.0], "no hit in the group: no rank term"


def test_a_group_with_identical_rewards_has_zero_advantage_and_no_nan():
    advantages = group_advantages(torch.tensor([[0.3, 0.3, 0.3], [1.0, 0.0, 0.5]]))
    assert advantages[0].tolist() == [0.0, 0.0, 0.0]
    assert advantages[1].tolist() == pytest.approx([1.2247, -1.2247, 0.0], abs=1e-3)
    logp = torch.full((3, 2), -1.5, requires_grad=True)
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), advantages[0], torch.ones(3), 0.2, 0.04)
    loss.backward()
    assert loss.item() == 0.0 and stats.kl == 0.0 and torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("factory", [compact_model, encoder_decoder_model], ids=["decoder_only", "encoder_decoder"])
def test_grpo_updates_raise_the_higher_reward_candidates_on_a_tiny_random_model(factory):
    model, vocab = factory([2, 2], CompactModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32), seed=0)
    reference = factory([2, 2], CompactModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32), seed=0)[0]
    prompts = [[BOS, *vocab.encode(CODES[2]).tolist()]] * 4
    completions = torch.from_numpy(vocab.encode(CODES))
    advantages = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.5]])).view(-1)
    with torch.no_grad():
        before = completion_logprobs(model, prompts, completions, PAD).sum(1)
        ref = completion_logprobs(reference, prompts, completions, PAD)
    old = completion_logprobs(model, prompts, completions, PAD).detach()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        loss, _ = grpo_loss(completion_logprobs(model, prompts, completions, PAD), old, ref, advantages, torch.ones(4), 0.2, 0.04)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = completion_logprobs(model, prompts, completions, PAD).sum(1)
    change = (after - before).tolist()
    assert change[0] > 0 and change[1] < 0 and change[2] < 0, change


GRPO = ["grpo.beam_width=10", "grpo.num_workers=2", "grpo.batch_size=10", "grpo.max_degradation=1.0"]


def test_grpo_stage_on_two_workers_logs_every_term_and_feeds_evaluate_and_resumes(tiny_run, tmp_path):
    cfg, store = copy_of_tiny_run(tiny_run, tmp_path / "run", *GRPO, "grpo.epochs=2")
    report = grpo.run(cfg, store).report
    assert [h["epoch"] for h in report["history"]] == [-1, 0, 1], "validation before any update, then per epoch"
    assert report["sft_val_ndcg@10"] == pytest.approx(store.require("sft").report["val_ndcg@10"], abs=1e-6)
    trained = report["history"][1]
    for key in ("reward_hit", "reward_valid", "reward_prefix", "reward_quality", "reward_rank", "reward_total",
                "kl", "clip_fraction", "group_reward_std", "s_per_step"):
        assert math.isfinite(trained[key]), key
    assert trained["reward_valid"] == 1.0, "constrained beams are always valid SIDs"
    assert report["prompts"] == 50 and trained["steps"] == 3, "50 prompts, 25 per worker, batches of 10"
    assert report["val_ndcg@10"] == max(h["val_ndcg@10"] for h in report["history"])
    assert "GR (grpo) x1" in evaluate.run(cfg, store).report["results"]

    # resume: a Ray Train run stopped after epoch 0, started again on the same storage, goes on at epoch 1
    short = load_config(None, TINY_RUN + GRPO + [f"storage.uri={tmp_path / 'run'}", "grpo.epochs=1"])
    prepared = grpo.grpo_inputs(short, store)
    first = grpo.make_trainer(short, prepared.loop_config, str(tmp_path / "train"), None).fit()
    assert sorted(m["epoch"] for _, m in first.best_checkpoints) == [-1, 0]
    longer = {**prepared.loop_config, "run": cfg.model_dump(mode="json")}
    resumed = grpo.make_trainer(cfg, longer, str(tmp_path / "train"), None).fit()
    epochs = [m["epoch"] for _, m in resumed.best_checkpoints]
    assert sorted(epochs) == [-1, 0, 1] and epochs.count(0) == 1, "the earlier epochs are kept, not rerun"
