"""sft (2 Ray Train workers) and evaluate (Ray Data actor pool) on a small synthetic run, with a tiny model."""

from pathlib import Path

import pytest

from conftest import TINY_RUN, copy_of_tiny_run
from deepinterestgr.config import load_config
from deepinterestgr.errors import DataError, StorageError
from deepinterestgr.metrics import ranking_metrics
from deepinterestgr.recommender.artifacts import check_vocabulary, load_catalog, load_format, load_model
from deepinterestgr.recommender.ranking import target_ranks
from deepinterestgr.run_report import build_report, validation_curves
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import evaluate, grpo, sft, tokenize

# On top of the shared tiny run's options (conftest.TINY_RUN): the tests below start from its prepare and tokenize and
# train their own models.
STAGES = [
    "sft.epochs=3", "sft.eval_every=1", "sft.num_workers=2", "evaluate.sasrec.enabled=true", "evaluate.sasrec.epochs=10",
    "evaluate.sasrec.hidden_size=16", "evaluate.sasrec.grid={lr: [0.00001, 0.01]}", "grpo.epochs=1", "grpo.batch_size=30",
    "grpo.beam_width=10", "grpo.max_degradation=1.0",
]
PREPARED = ("prepare", "tokenize")


def _config(tmp_path, *overrides):
    return load_config(None, TINY_RUN + STAGES + [f"storage.uri={tmp_path}", *overrides])


def _check_run_report(store):
    """`dig report` on the real tiny run: files exist, PNGs decode, numbers equal the stage reports'."""
    from PIL import Image

    from ray_jobs import report

    assert report.main(["--set", f"storage.uri={store.uri}"]) == 0
    folder = Path(store.root) / "report"
    text = (folder / "report.md").read_text()
    for name in ("validation.png", "grpo_rewards.png", "sids.png"):
        assert f"]({name})" in text
        with Image.open(folder / name) as image:
            image.load()
            assert image.size[0] > 200 and image.size[1] > 100
    for model, metrics in store.require("evaluate").report["results"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {model} |"))
        assert row == f"| {model} | " + " | ".join(f"{metrics[k]:.4f}" for k in sorted(metrics)) + " |"
    for i, level in enumerate(store.require("tokenize").report["levels"]):
        assert f"| {i + 1} | {level['utilisation']:.3f} | {level['perplexity']:.1f} |" in text
    best = store.require("grpo").report
    assert f"grpo: best epoch {best['best_epoch']}, validation HR@10 {best['val_hr@10']:.4f}" in text


def test_sft_with_two_workers_then_evaluate_against_popularity(tiny_run, tmp_path):
    fresh = _config(tmp_path / "fresh")
    with pytest.raises(StorageError, match="no committed 'prepare' stage"):
        sft.run(fresh, RunStore(fresh))
    cfg, store = copy_of_tiny_run(tiny_run, tmp_path / "run", *STAGES, stages=PREPARED)

    trained = sft.run(cfg, store)
    report = trained.report
    assert report["epochs_run"] == 3 and len(report["history"]) == 3
    assert report["history"][-1]["loss"] < report["history"][0]["loss"], "training lowers the loss"
    assert 0 <= report["val_ndcg@10"] <= report["val_hr@10"] <= 1
    assert report["valid_users"] == 50
    model = load_model(store, "sft")
    catalog = load_catalog(store)
    assert model.config.vocab_size == 3 + sum(catalog.trie.sizes) + len(catalog.codes), "one token per item"
    fmt = load_format(store, "sft", catalog)
    assert fmt.item_weight == cfg.sft.item_score_weight > 0, "the model folder says how to weigh its item head"

    evaluated = evaluate.run(cfg, store)
    results = evaluated.report["results"]
    assert list(results) == ["GR (sft) x1", "SASRec x1", "most-popular"]
    validation = evaluated.report["validation"]
    assert list(validation) == list(results)
    grid = evaluated.report["sasrec"]["grid"]
    assert [p["settings"] for p in grid] == [{"lr": 0.00001}, {"lr": 0.01}]
    chosen = max(grid, key=lambda p: p["val_ndcg@10"])
    assert evaluated.report["sasrec"]["chosen"] == chosen["settings"] == {"lr": 0.01}, "the grid point validation prefers is kept"
    assert validation["SASRec x1"]["ndcg@10"] == pytest.approx(chosen["val_ndcg@10"]), "the kept model is that grid point's"
    for metrics in results.values():
        assert metrics["hr@5"] <= metrics["hr@10"] and metrics["ndcg@10"] <= metrics["hr@10"]
    # evaluate ranks with the item head: its GR figures are those of the library's ranking with the weight
    seqs = catalog.sequences
    users = [u for u in range(len(seqs.user_ids)) if seqs.test[u] >= 0]
    histories = [seqs.train[u] + ([int(seqs.valid[u])] if seqs.valid[u] >= 0 else []) for u in users]
    ranks = target_ranks(model, [fmt.prompt(h) for h in histories], seqs.test[users], catalog.trie, fmt.vocab,
                         cfg.evaluate.beam_width, exclude=histories if cfg.evaluate.exclude_history else None,
                         item_weight=fmt.item_weight)
    assert results["GR (sft) x1"] == pytest.approx(ranking_metrics(ranks, cfg.evaluate.ks))
    # and its validation figures rank each validation user's training items by the same search
    valid_users = [u for u in range(len(seqs.user_ids)) if seqs.valid[u] >= 0]
    valid_ranks = target_ranks(model, [fmt.prompt(seqs.train[u]) for u in valid_users], seqs.valid[valid_users], catalog.trie,
                               fmt.vocab, cfg.evaluate.beam_width, item_weight=fmt.item_weight)
    assert validation["GR (sft) x1"] == pytest.approx(ranking_metrics(valid_ranks, cfg.evaluate.ks))
    assert evaluate.run(cfg, store).attempt == evaluated.attempt, "unchanged inputs: skipped"
    # every user's rank under every model is kept, and the report's figures and intervals are those ranks'
    table = store.read_table("evaluate", "ranks").to_pandas()
    for split, figures in (("test", results), ("valid", validation)):
        rows = table[table["split"] == split]
        assert len(rows) == (len(users) if split == "test" else len(valid_users))
        for name, metrics in figures.items():
            assert ranking_metrics(rows[name].to_numpy(), cfg.evaluate.ks) == pytest.approx(metrics), (split, name)
    assert table[table["split"] == "test"]["GR (sft) x1"].tolist() == ranks.tolist()
    for split, figures in (("test", results), ("validation", validation)):
        interval = evaluated.report["intervals"][split]["SASRec x1"]
        assert interval["ratio"] == pytest.approx(figures["GR (sft) x1"]["ndcg@10"] / figures["SASRec x1"]["ndcg@10"])
        assert interval["low"] <= interval["ratio"] <= interval["high"] and interval["low"] < interval["high"]
    md = store.read_bytes("evaluate", "report.md").decode()
    assert "| most-popular |" in md
    # the popularity groups partition the test users, so their user-weighted means are the overall figures
    groups = evaluated.report["by_target_popularity"]
    assert len(groups) >= 2 and sum(g["users"] for g in groups) == evaluated.report["test_users"]
    for name, metrics in results.items():
        weighted = sum(g["users"] * g["models"][name]["ndcg@10"] for g in groups) / evaluated.report["test_users"]
        assert weighted == pytest.approx(metrics["ndcg@10"])
    assert "by how often the test target occurs in training" in md

    # the config now asks for the encoder-decoder (reading item tokens): the compact model is refused, then
    # the encoder-decoder is trained anew and evaluated
    encdec = _config(tmp_path / "run", "sft.backbone=encoder_decoder", "sft.item_head=0", "sft.ema_decay=0.5")
    with pytest.raises(DataError, match="backbone compact but sft.backbone is encoder_decoder: rerun `dig sft`"):
        evaluate.run(encdec, RunStore(encdec))
    report = sft.run(encdec, RunStore(encdec)).report
    assert report["backbone"] == "encoder_decoder" and report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["user_examples"] == sum(max(len(t) - 1, 0) for t in load_catalog(store).sequences.train), "one per target"
    assert load_model(store, "sft").config.is_encoder_decoder
    catalog = load_catalog(store)
    assert load_model(store, "sft").config.vocab_size == 3 + sum(catalog.trie.sizes) + len(catalog.codes), "one token per item"
    catalog.codes = catalog.codes[:-1]
    with pytest.raises(DataError, match="item tokens for 50 items but the SID table has 49: .* rerun `dig sft`"):
        check_vocabulary(store, "sft", catalog)
    assert "GR (sft) x1" in evaluate.run(encdec, RunStore(encdec)).report["results"]
    tuned = grpo.run(encdec, RunStore(encdec)).report
    assert [h["epoch"] for h in tuned["history"]] == [-1, 0] and tuned["history"][1]["reward_valid"] == 1.0
    assert "GR (grpo) x1" in evaluate.run(encdec, RunStore(encdec)).report["results"], "GRPO and evaluate take the encoder-decoder"
    _check_run_report(RunStore(encdec))

    # re-tokenize with another SID shape: the trained model no longer matches and evaluate says so
    changed = _config(tmp_path / "run", "tokenize.rqvae.levels=3", "sft.backbone=encoder_decoder", "sft.item_head=0", "sft.ema_decay=0.5")
    tokenize.run(changed, RunStore(changed))
    with pytest.raises(DataError, match="trained on SID levels .* tokenize changed after training; rerun `dig sft` and `dig grpo`"):
        evaluate.run(changed, RunStore(changed))


def test_sft_members_and_the_model_distilled_from_them_feed_evaluate_serving_and_grpo(tiny_run, tmp_path, monkeypatch):
    """Two tiny members (seeds 0 and 1), trained at once, on the synthetic run, then one model distilled from them
    (sft.distill): evaluate ranks both, the distilled one serves and GRPO tunes it; a crash while saving the second
    member to finish keeps the first for the rerun."""
    import numpy as np
    import torch

    from actors.predictor import Predictor
    from deepinterestgr.recommender.artifacts import load_meta
    from deepinterestgr.recommender.backbones.base import backbone_of
    from deepinterestgr.recommender.request import RecommendRequest
    from deepinterestgr.recommender.beam_search import beam_search
    from deepinterestgr.recommender.ensemble import Ensemble

    cfg, store = copy_of_tiny_run(tiny_run, tmp_path, *STAGES, "sft.members=2", "sft.concurrent_members=2", "sft.num_workers=1",
                                  "sft.epochs=2", "sft.distill=1", "evaluate.sasrec.grid={}",
                                  "pipeline.stages=[prepare,tokenize,sft,evaluate]", stages=PREPARED)
    launched, saved, task, save_model = [], [], sft._train_member_task, sft.save_model

    class RecordedTask:
        def remote(self, *args):
            launched.append("distilled" if len(args) > 6 else args[-1])
            return task.remote(*args)

    def crash_saving_the_second(attempt, model, meta, tokenizer, folder):
        saved.append(folder)
        if len(saved) == 2:
            raise RuntimeError("driver lost")
        return save_model(attempt, model, meta, tokenizer, folder=folder)

    monkeypatch.setattr(sft, "_train_member_task", RecordedTask())
    monkeypatch.setattr(sft, "save_model", crash_saving_the_second)
    with pytest.raises(RuntimeError, match="driver lost"):
        sft.run(cfg, store)
    assert store.entry("sft") is None
    assert launched == [0, 1], "both members' fits start before either ends"
    [kept] = (Path(store.root) / "sft").iterdir()
    kept_folder, lost_folder = saved
    lost = int(lost_folder.rsplit("/", 1)[1])
    first_weights = (kept / kept_folder / "model.safetensors").read_bytes()
    report = sft.run(cfg, store).report
    assert launched == [0, 1, lost, "distilled"], "the rerun trains only the member that had not been saved, then distils"
    assert store.entry("sft").attempt == kept.name
    assert (kept / kept_folder / "model.safetensors").read_bytes() == first_weights
    assert [m["seed"] for m in report["members"]] == [0, 1] and report["distilled"]["seed"] == 0
    assert report["val_ndcg@10"] == report["members"][0]["val_ndcg@10"], "the top-level figures are the first member's"
    model = load_model(store, "sft", members=True)
    assert isinstance(model, Ensemble) and len(model.members) == 2 and not backbone_of(model).tunable
    first, second = (m.get_input_embeddings().weight for m in model.members)
    assert not torch.equal(first, second), "each member trains from its own seed"
    distilled = load_model(store, "sft")
    assert not isinstance(distilled, Ensemble), "the distilled model serves in the members' place"
    assert not torch.equal(distilled.get_input_embeddings().weight, first), "member 0's seed, but the members' distributions"

    catalog = load_catalog(store)
    fmt = load_format(store, "sft", catalog)
    seqs = catalog.sequences
    users = [u for u in range(len(seqs.user_ids)) if seqs.test[u] >= 0]
    histories = [seqs.train[u] + ([int(seqs.valid[u])] if seqs.valid[u] >= 0 else []) for u in users]
    prompts = [fmt.prompt(h) for h in histories]
    exclude = histories if cfg.evaluate.exclude_history else None

    def ranks_of(ranker):
        return target_ranks(ranker, prompts, seqs.test[users], catalog.trie, fmt.vocab, cfg.evaluate.beam_width, exclude=exclude,
                            item_weight=fmt.item_weight)

    ranks, alone, served_ranks = ranks_of(model), ranks_of(model.members[0]), ranks_of(distilled)
    assert not np.array_equal(ranks, alone), "the second member changes the test ranking"
    evaluated = evaluate.run(cfg, store).report
    results = evaluated["results"]
    assert list(results) == ["GR (sft) x1 distilled", "GR (sft) x2", "SASRec x2", "SASRec x1", "most-popular"], \
        "the model that serves, the members together, SASRec at the members' cost, and one alone"
    assert results["GR (sft) x2"] == pytest.approx(ranking_metrics(ranks, cfg.evaluate.ks)), "evaluate ranks with the ensemble"
    assert results["GR (sft) x1 distilled"] == pytest.approx(ranking_metrics(served_ranks, cfg.evaluate.ks))
    assert evaluated["distilled"] and (evaluated["sasrec"]["members"], evaluated["sasrec"]["fits"]) == (2, 2)
    for size in ("1", "2"):
        assert evaluated["sasrec_by_members"][size]["test"] == results[f"SASRec x{size}"]
        assert evaluated["sasrec_by_members"][size]["valid"] == evaluated["validation"][f"SASRec x{size}"]
    assert results["SASRec x2"] != results["SASRec x1"], "the second SASRec seed changes the ranking"
    assert set(evaluated["intervals"]["test"]) == {"SASRec x2", "SASRec x1"}
    test_ranks = store.read_table("evaluate", "ranks").to_pandas().query("split == 'test'")
    assert test_ranks["GR (sft) x2"].tolist() == ranks.tolist() and test_ranks["GR (sft) x1 distilled"].tolist() == served_ranks.tolist()
    # The report's example users: GR's top 5 is the served model's beam for that user, the target ranked as above.
    assert len(evaluated["examples"]) == min(cfg.evaluate.examples, len(users))
    for example in evaluated["examples"]:
        i = [seqs.user_ids[u] for u in users].index(example["user_id"])
        beam = beam_search(distilled, [prompts[i]], catalog.trie, fmt.vocab, cfg.evaluate.beam_width, cfg.evaluate.beam_width,
                           pad_id=fmt.pad_id, item_weight=fmt.item_weight).items[0]
        assert [item["item_id"] for item in example["top"]] == [catalog.item_ids[r] for r in beam[:5]]
        assert example["target"]["item_id"] == catalog.item_ids[int(seqs.test[users[i]])]
        assert example["rank"] == (int(served_ranks[i]) + 1 if served_ranks[i] >= 0 else None)
    curves = validation_curves({"sft": report, "evaluate": evaluated})
    assert list(curves["sft"]) == ["member 1 (seed 0)", "member 2 (seed 1)", "distilled (seed 0)"] and all(curves["sft"].values()), \
        "every member's validation curve, and the distilled model's, is in the report"
    assert "## Example users" in build_report({"sft": report, "evaluate": evaluated}, "run").markdown

    user = seqs.user_ids[users[0]]
    served = Predictor(cfg).recommend([RecommendRequest(k=5, user_id=user)])[0]
    history = seqs.train[users[0]] + [int(x) for x in (seqs.valid[users[0]], seqs.test[users[0]]) if x >= 0]
    width = max(cfg.serve.beam_width, 5)
    expected = beam_search(distilled, [fmt.prompt(history)], catalog.trie, fmt.vocab, width, width, pad_id=fmt.pad_id,
                           item_weight=fmt.item_weight).items[0][:5]
    assert [item["item_id"] for item in served["items"]] == [catalog.item_ids[r] for r in expected]

    tuned = grpo.run(cfg, store).report
    assert tuned["sft_val_ndcg@10"] == pytest.approx(report["distilled"]["val_ndcg@10"], abs=1e-4), "GRPO starts from the distilled model"
    assert (load_meta(store, "grpo").members, load_meta(store, "grpo").distilled) == (1, False)

    # bench/distill.py on these members (in this process) trains what the stage trained: the same figure.
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill", Path(__file__).parents[1] / "bench" / "distill.py")
    distill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distill)
    store.save_config(cfg)
    student = distill.student(store.root, 1.0)
    assert student["sampled_val_ndcg@10"] == pytest.approx(report["distilled"]["val_ndcg@10"], abs=1e-4)
    assert student["teachers"] == 2
    assert student["members_ranked_together"]["test"]["GR (sft) x2"]["ndcg@10"] == pytest.approx(results["GR (sft) x2"]["ndcg@10"], abs=1e-4)
