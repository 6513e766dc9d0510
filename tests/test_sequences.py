import numpy as np
import pyarrow as pa
import pytest
import torch

from deepinterestgr.config import SFTConfig
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.backbones.compact import COMPACT
from deepinterestgr.recommender.backbones.base import IGNORE
from deepinterestgr.recommender.model import BOS, PAD, SPECIAL_TOKENS, content_rows
from deepinterestgr.recommender.sequences import RaggedRows, build_sequences, most_popular, tokens
from deepinterestgr.recommender.sft_loop import average_weights, drop_item_tokens, item_head_loss, sft_loss
from deepinterestgr.recommender.vocab import SIDVocab
from ray_jobs.evaluate import popularity_ranks


def test_build_sequences_orders_by_time_and_counts_unknown_items():
    table = pa.table({
        "user_id": ["u", "u", "u", "u", "v"], "item_id": ["b", "a", "zz", "c", "a"],
        "timestamp": [2, 1, 3, 4, 1], "split": ["train", "train", "valid", "test", "train"],
    })
    seqs = build_sequences(table, ["a", "b", "c"])
    assert seqs.user_ids == ["u", "v"]
    assert list(seqs.train) == [[0, 1], [0]] and seqs.train[-1] == [0]
    assert seqs.valid.tolist() == [-1, -1] and seqs.test.tolist() == [2, -1]
    assert seqs.unknown_items == 1


def test_tokens_keep_the_most_recent_items():
    vocab = SIDVocab((3, 4), SPECIAL_TOKENS)
    codes = np.array([[0, 1], [2, 3], [1, 0]])
    assert tokens([0, 1, 2], codes, vocab, max_items=2) == [BOS, 3 + 2, 3 + 3 + 3, 3 + 1, 3 + 3 + 0]
    assert tokens([], codes, vocab, max_items=2) == [BOS]


def test_collate_masks_padding_and_context_out_of_the_loss():
    # pad id 2 also occurs inside the first example: the mask must come from the lengths
    batch = COMPACT.training_batch([Example([1, 5, 2, 6], 2), Example([1, 7], 1)], pad_id=2)
    assert batch["input_ids"].tolist() == [[1, 5, 2, 6], [1, 7, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 2, 6], [IGNORE, 7, IGNORE, IGNORE]]
    read_only = COMPACT.training_batch([Example([1, 5, 20, 6, 21], 1, read_only_from=20)], pad_id=0)
    assert read_only["labels"].tolist() == [[IGNORE, 5, IGNORE, 6, IGNORE]], "item tokens are read, never targets"


def test_popularity_ranks_full_ranking_and_history_exclusion():
    class Seqs:
        train = RaggedRows.from_lists([[2, 2, 1], [2, 0]])
    ranking = most_popular(Seqs, 4)
    assert ranking.tolist() == [2, 0, 1, 3]  # 2 (3x), then 0 and 1 (1x, tie by row), then 3
    assert popularity_ranks(ranking, np.array([1, 3]), None).tolist() == [2, 3]
    assert popularity_ranks(ranking, np.array([1, 3]), [[2], [0, 1]]).tolist() == [1, 1]


def test_sasrec_learns_a_deterministic_successor():
    """Every item i is followed by i+1: a few epochs of SASRec must rank the successor first."""
    from deepinterestgr.baselines.sasrec import fit_sasrec, sasrec_ranks
    from deepinterestgr.config import SASRecConfig

    n = 12
    train = [[(s + k) % n for k in range(6)] for s in range(n)] * 4
    valid = np.array([(s + 6) % n for s in range(n)] * 4)
    model, history = fit_sasrec(train, valid, n, SASRecConfig(hidden_size=32, epochs=60, eval_every=10, dropout=0.0, patience=10), seed=0)
    ranks = sasrec_ranks(model, [[0, 1, 2], [5, 6]], np.array([3, 7]))
    assert ranks.tolist() == [0, 0]
    assert history[-1]["val_ndcg@10"] > 0.9
    # after [3, 0, 1, 2] the model puts 3 first; removing history items lifts the target above it
    plain = sasrec_ranks(model, [[3, 0, 1, 2]], np.array([4]))
    excluded = sasrec_ranks(model, [[3, 0, 1, 2]], np.array([4]), exclude_history=True)
    import torch

    from deepinterestgr.baselines.sasrec import _left_pad

    with torch.no_grad():
        scores = model.scores(_left_pad([[3, 0, 1, 2]], model.max_len)).numpy()[0]
    above = {int(i) for i in np.flatnonzero(scores > scores[4])}
    assert plain[0] == len(above) >= 1
    assert excluded[0] == len(above - {3, 0, 1, 2})


def test_windows_make_every_training_interaction_after_the_first_a_target_once():
    from deepinterestgr.baselines.sasrec import training_windows
    from deepinterestgr.recommender.sequences import window_spans

    for length in range(0, 40):
        spans = window_spans(length, 6)
        targets = [position for start, end in spans for position in range(start + 1, end)]
        assert targets == list(range(1, length)), length
        assert all(end - start <= 6 for start, end in spans)
    windows = training_windows([list(range(12)), [7], [3, 4]], max_len=5)
    assert windows == [[0, 1], [1, 2, 3, 4, 5, 6], [6, 7, 8, 9, 10, 11], [3, 4]]


def test_sasrec_masks_padding_as_keys_so_padded_positions_cannot_change_the_scores_with_a_tiny_random_model():
    """Left padding reaches no real position: the position rows only padded slots use do not move a short
    history's scores (an unmasked model reads them through attention), and an empty history gives finite scores."""
    from deepinterestgr.baselines.sasrec import SASRec, _left_pad
    from deepinterestgr.config import SASRecShape

    torch.manual_seed(0)
    model = SASRec(9, SASRecShape(hidden_size=16, heads=2, max_len=8, dropout=0.0)).eval()
    ids = torch.tensor([[0, 0, 0, 0, 0, 2, 3, 4], [0] * 8])  # [1, 2, 3] and an empty history, full width
    with torch.no_grad():
        before = model.scores(ids)
        trimmed = model.scores(_left_pad([[1, 2, 3], [5]], 8))
        assert _left_pad([[1, 2, 3], [5]], 8).shape == (2, 3), "a batch is padded to its longest row only"
        assert torch.allclose(before[0], trimmed[0], atol=1e-5), "and its scores are those of full-width padding"
        model.positions.weight[:5] += torch.randn(5, 16)  # rows of the first 5 slots: padding for [1, 2, 3]
        after = model.scores(ids)
        assert torch.allclose(before[0], after[0], atol=1e-5)
        assert torch.isfinite(after[1]).all(), "a fully padded row has no NaN"
        model.positions.weight[6] += torch.randn(16)  # a real position's row does move them
        assert not torch.allclose(after[0], model.scores(ids)[0], atol=1e-5)


def test_sasrec_members_keep_the_grid_point_validation_prefers_and_rank_by_summed_log_softmax():
    from deepinterestgr.baselines.sasrec import _left_pad, fit_sasrec_members, sasrec_ranks
    from deepinterestgr.config import SASRecShape

    n = 10
    train = [[(s + k) % n for k in range(6)] for s in range(n)] * 3
    valid = np.array([(s + 6) % n for s in range(n)] * 3)
    cfg = SASRecShape(hidden_size=16, heads=2, epochs=20, eval_every=5, dropout=0.0, patience=10)
    fit = fit_sasrec_members(train, valid, n, cfg, {"lr": [1e-6, 1e-2]}, members=2, seed=0)
    assert [p["settings"] for p in fit.grid] == [{"lr": 1e-6}, {"lr": 1e-2}]
    assert fit.grid[1]["val_ndcg@10"] > fit.grid[0]["val_ndcg@10"] and fit.shape.lr == 1e-2
    assert (len(fit.models), fit.fits) == (2, 3)
    assert not torch.equal(fit.models[0].items.weight, fit.models[1].items.weight), "each member has its own seed"
    histories, targets = [[0, 1, 2], [4, 5], [9]], np.array([3, 6, 2])
    with torch.no_grad():
        summed = sum(torch.log_softmax(m.eval().scores(_left_pad(histories, m.max_len)), -1) for m in fit.models).numpy()
    expected = [(summed[row] >= summed[row, t]).sum() - 1 for row, t in enumerate(targets)]
    assert sasrec_ranks(fit.models, histories, targets).tolist() == expected
    from deepinterestgr.baselines.sasrec import ensemble_ranks

    for exclude in (False, True):
        every_size = ensemble_ranks(fit.models, histories, targets, exclude_history=exclude)
        for size in (1, 2):
            assert every_size[size - 1].tolist() == sasrec_ranks(fit.models[:size], histories, targets, exclude_history=exclude).tolist()


def test_sasrec_fits_as_concurrent_ray_tasks_choose_and_train_what_one_after_another_does(ray_cluster):
    from deepinterestgr.baselines.sasrec import fit_sasrec_members
    from deepinterestgr.config import SASRecShape
    from ray_jobs.evaluate import ray_fit_map

    n = 10
    train = [[(s + k) % n for k in range(6)] for s in range(n)] * 3
    valid = np.array([(s + 6) % n for s in range(n)] * 3)
    cfg = SASRecShape(hidden_size=16, heads=2, epochs=10, eval_every=5, dropout=0.1, patience=10)
    grid = {"lr": [1e-3, 1e-2], "hidden_size": [8, 16]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each 1-CPU task runs with
    try:
        alone = fit_sasrec_members(train, valid, n, cfg, grid, members=3, seed=4)
    finally:
        torch.set_num_threads(threads)
    tasks = fit_sasrec_members(train, valid, n, cfg, grid, members=3, seed=4, fit_map=ray_fit_map(1))
    assert [(p["settings"], p["val_ndcg@10"]) for p in tasks.grid] == [(p["settings"], p["val_ndcg@10"]) for p in alone.grid]
    assert tasks.shape == alone.shape and tasks.history == alone.history and len(tasks.models) == 3
    for ours, theirs in zip(tasks.models, alone.models):
        assert torch.equal(ours.items.weight, theirs.items.weight), "each member, by its seed, lands where it lands in process"


def test_epoch_order_caps_each_group_with_a_fresh_sample_per_epoch():
    from deepinterestgr.recommender.sft_loop import epoch_order

    groups = np.array([0] * 10 + [1] * 2 + [2])
    everything = epoch_order(groups, 0, seed=0)
    assert sorted(everything.tolist()) == list(range(13))
    capped = [epoch_order(groups, 3, seed=s) for s in range(4)]
    for order in capped:
        assert np.bincount(groups[order]).tolist() == [3, 2, 1] and len(set(order.tolist())) == len(order)
    assert len({tuple(sorted(o.tolist())) for o in capped}) > 1, "another epoch, another sample of the long group"
    assert np.array_equal(epoch_order(groups, 3, seed=1), capped[1]), "same seed, same order"


def test_weight_average_moves_each_trainable_parameter_by_one_minus_decay_and_skips_frozen_ones():
    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    average = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        model.weight.fill_(1.0)
    average_weights(average, model, 0.5)
    average_weights(average, model, 0.5)
    assert set(average) == {"weight"}
    assert average["weight"].tolist() == [[0.75, 0.75]], "0 -> 0.5 -> 0.75 towards the weights"
    assert model.weight.tolist() == [[1.0, 1.0]], "the model's own weights are untouched"
    with torch.no_grad():
        model.weight.fill_(3.0)
    average_weights(average, model, 0.9)
    assert average["weight"][0, 0].item() == pytest.approx(0.9 * 0.75 + 0.1 * 3.0)


def test_item_head_loss_predicts_each_next_item_at_the_position_before_its_first_code():
    vocab = SIDVocab((3, 4), SPECIAL_TOKENS)
    codes = np.array([[0, 1], [2, 3], [1, 0], [2, 2]])
    rows = [[0, 1, 2], [3, 1]]
    examples = [Example(tokens(r, codes, vocab, 0, item_tokens=True), 1, vocab.size) for r in rows]
    batch = COMPACT.training_batch(examples, pad_id=0)
    logits = torch.randn(*batch["input_ids"].shape, vocab.size + len(codes), generator=torch.Generator().manual_seed(0))
    # each item takes 1 + levels tokens after BOS: item k's first code sits at 1 + 3k, predicted from 3k
    expected = [-torch.log_softmax(logits[b, 3 * k, vocab.size:], dim=0)[r[k]] for b, r in enumerate(rows) for k in range(len(r))]
    loss = item_head_loss(logits, batch["input_ids"], batch["labels"], vocab)
    assert torch.isclose(loss, torch.stack(expected).mean())
    with pytest.raises(ValueError, match="sft.item_tokens=true"):
        plain = COMPACT.training_batch([Example(tokens(r, codes, vocab, 0), 1) for r in rows], pad_id=0)
        item_head_loss(logits, plain["input_ids"], plain["labels"], vocab)


def test_item_token_dropout_hides_only_item_tokens_and_keeps_the_item_heads_targets_with_a_tiny_random_model():
    vocab = SIDVocab((3, 4), SPECIAL_TOKENS)
    codes = np.array([[0, 1], [2, 3], [1, 0], [2, 2]])
    rows = [[0, 1, 2, 3, 1, 0], [3, 1, 2, 0, 2]]
    batch = COMPACT.training_batch([Example(tokens(r, codes, vocab, 0, item_tokens=True), 1, vocab.size) for r in rows], 0)
    ids = batch["input_ids"]
    dropped = drop_item_tokens(ids, vocab, 0.5, torch.Generator().manual_seed(3))
    item = ids >= vocab.size
    assert torch.equal(dropped[~item], ids[~item]), "SID codes, BOS, SEP and padding are never dropped"
    gone = item & (dropped != ids)
    assert (dropped[gone] == PAD).all() and 0 < int(gone.sum()) < int(item.sum())
    assert torch.equal(dropped, drop_item_tokens(ids, vocab, 0.5, torch.Generator().manual_seed(3))), "seeded"
    assert torch.equal(drop_item_tokens(ids, vocab, 0.0, torch.Generator()), ids)

    cfg = SFTConfig(hidden_size=16, heads=2, intermediate_size=32, layers=1, dropout=0.0, item_tokens=True, item_head=1.0)
    model, _, _ = COMPACT.build(cfg, [3, 4], seed=0, items=len(codes))
    loss = sft_loss(model, batch, item_head=1.0, vocab=vocab, item_token_dropout=0.9, generator=torch.Generator().manual_seed(5))
    hidden = drop_item_tokens(ids, vocab, 0.9, torch.Generator().manual_seed(5))
    out = model(input_ids=hidden, attention_mask=batch["attention_mask"], labels=batch["labels"])
    # The head's targets are read from the undropped batch: read from `hidden` they would be pad tokens.
    expected = out.loss + item_head_loss(out.logits, ids, batch["labels"], vocab)
    assert torch.isclose(loss, expected)
    assert not torch.isclose(loss, sft_loss(model, batch, item_head=1.0, vocab=vocab))


@pytest.mark.parametrize("backbone", ["compact", "encoder_decoder"])
def test_embedding_dropout_acts_only_while_training_and_leaves_the_saved_weights_alone_with_a_tiny_random_model(backbone):
    shape = dict(backbone=backbone, hidden_size=16, heads=2, intermediate_size=32, layers=1, dropout=0.0)
    plain, _, _ = COMPACT.build(SFTConfig(**shape), [3, 4], seed=0)
    noisy, _, _ = COMPACT.build(SFTConfig(**shape, embedding_dropout=0.5), [3, 4], seed=0)
    assert plain.state_dict().keys() == noisy.state_dict().keys()
    assert all(torch.equal(v, noisy.state_dict()[k]) for k, v in plain.state_dict().items())
    ids = torch.tensor([[1, 3, 7, 4, 8, 2]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if backbone == "encoder_decoder":
        inputs["decoder_input_ids"] = torch.tensor([[0, 3]])
    with torch.no_grad():
        assert torch.allclose(plain(**inputs).logits, noisy.eval()(**inputs).logits), "no dropout in eval mode"
        assert torch.allclose(plain.train()(**inputs).logits, plain(**inputs).logits), "the plain model has none to drop"
        assert not torch.allclose(noisy.train()(**inputs).logits, plain(**inputs).logits)


def test_content_rows_are_principal_components_with_fixed_signs():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    rows = content_rows(vectors, 8)
    assert rows.shape == (40, 8) and rows.dtype == np.float32
    assert np.allclose(rows[:, 6:], 0), "no components past the input's width"
    assert rows.std() == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.diff(rows[:, :6].var(axis=0)) < 0), "components by explained variance"
    assert np.allclose(content_rows(-vectors, 8), rows, atol=1e-5), "the sign of each component does not depend on the input's"
    assert np.allclose(content_rows(vectors + 7.0, 8), rows, atol=1e-5), "centred"


@pytest.mark.parametrize("backbone", ["compact", "encoder_decoder"])
def test_content_init_starts_item_tokens_from_content_on_the_models_scale_with_a_tiny_random_model(backbone):
    shape = dict(backbone=backbone, hidden_size=16, heads=2, intermediate_size=32, layers=1, item_tokens=True)
    vectors = np.random.default_rng(1).normal(size=(12, 30))
    vectors[5] = vectors[2]  # two items with the same content
    rows = content_rows(vectors, 16)
    random, vocab, _ = COMPACT.build(SFTConfig(**shape), [3, 4], seed=0, items=12)
    content, _, _ = COMPACT.build(SFTConfig(**shape, item_token_init="content"), [3, 4], seed=0, items=12, item_rows=rows)
    before, after = random.get_input_embeddings().weight.detach(), content.get_input_embeddings().weight.detach()
    assert torch.equal(before[: vocab.size], after[: vocab.size]), "only the item-token rows change"
    items = after[vocab.size:]
    assert torch.allclose(items[5], items[2], atol=1e-6) and not torch.allclose(before[vocab.size + 5], before[vocab.size + 2])
    # On the scale of the SID rows, which Llama and T5 initialise differently.
    assert torch.allclose(items, torch.from_numpy(rows) * before[SPECIAL_TOKENS: vocab.size].std(), atol=1e-6)
    with pytest.raises(ValueError, match="needs the content rows of all 12 items, 16 wide; got shape"):
        COMPACT.build(SFTConfig(**shape, item_token_init="content"), [3, 4], seed=0, items=12, item_rows=rows[:, :8])
