"""An SFT epoch depends on its seed and the state it starts from only, so a resumed run equals an uninterrupted one."""

import numpy as np
import pytest
import torch

from deepinterestgr.config import SFTConfig
from deepinterestgr.recommender.formats import Example
from deepinterestgr.recommender.backbones.compact import COMPACT
from deepinterestgr.recommender.model import trainable_state
from deepinterestgr.recommender.sft_loop import compiled, epoch_plan, epoch_seed, optimizer_and_schedule, train_epoch


def _state_after(epochs: range, start: dict | None, disturb: bool):
    cfg = SFTConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, dropout=0.3, embedding_dropout=0.2, batch_size=4, epochs=3)
    model, vocab, _ = COMPACT.build(cfg, [4, 4], seed=0)
    rng = np.random.default_rng(0)
    examples = [Example([int(t) for t in rng.integers(3, 10, size=9)], 3) for _ in range(16)]
    groups = np.arange(16)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(epoch_plan(examples, groups, cfg, epoch_seed(0, 0, 0))))
    if start is not None:
        model.load_state_dict(start["model"], strict=False)
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    for epoch in epochs:
        if disturb:
            torch.rand(1000)  # a restarted worker's generator is wherever its process left it
        train_epoch(model, optimizer, scheduler, examples, groups, cfg, vocab, 0, epoch_seed(0, epoch, 0))
    return {"model": trainable_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def test_a_run_resumed_after_its_first_epoch_ends_with_the_uninterrupted_runs_weights_tiny_random_model():
    straight = _state_after(range(3), None, disturb=False)
    first = _state_after(range(1), None, disturb=False)
    resumed = _state_after(range(1, 3), first, disturb=True)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_packed_rows_give_the_unpacked_loss_and_gradients_with_item_tokens_and_head_tiny_random_model():
    from deepinterestgr.recommender.sft_loop import sft_loss

    cfg = SFTConfig(hidden_size=16, layers=2, heads=2, intermediate_size=32, dropout=0.0, item_tokens=True, item_head=0.5)
    sizes, items = [4, 4], 6
    model, vocab, _ = COMPACT.build(cfg, sizes, seed=0, items=items)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(items, 2))

    def example(length: int) -> Example:
        ids = [1]  # BOS, then per item: its SID codes and its item token
        for item in rng.integers(0, items, size=length):
            ids += [int(vocab.starts[0] + codes[item][0]), int(vocab.starts[1] + codes[item][1]), vocab.size + int(item)]
        return Example(ids, 1, vocab.size)

    examples = [example(n) for n in (5, 2, 3, 1, 4, 2, 6)]
    plain = COMPACT.training_batch(examples, 0)
    packed = COMPACT.training_batch(examples, 0, pack_tokens=24)
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0], "fewer rows"
    assert int((packed["labels"] != -100).sum()) == int((plain["labels"] != -100).sum())
    grads = []
    for batch in (plain, packed):
        model.zero_grad()
        loss = sft_loss(model, batch, item_head=0.5, vocab=vocab)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][1], grads[1][1]))


def test_length_buckets_keep_every_example_once_in_batches_of_the_same_size_with_less_padding():
    from deepinterestgr.recommender.sft_loop import epoch_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    order = rng.permutation(1000)
    plain = epoch_batches(order, lengths, 32, 0, seed=1)
    assert np.array_equal(np.concatenate(plain), order), "without buckets: the order, cut in turn"
    bucketed = epoch_batches(order, lengths, 32, 10, seed=1)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(1000))
    assert sorted(len(b) for b in bucketed) == sorted(len(b) for b in plain)

    def padded(batches):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)

    assert padded(bucketed) < 0.2 * padded(plain)
    assert all(np.array_equal(a, b) for a, b in zip(bucketed, epoch_batches(order, lengths, 32, 10, seed=1))), "seeded"
    assert not all(np.array_equal(a, b) for a, b in zip(bucketed, epoch_batches(order, lengths, 32, 10, seed=2)))


def test_a_compiled_forward_trains_to_the_eager_weights_over_batches_of_several_lengths_tiny_random_model():
    # Dropout off: compiled kernels draw their own random numbers, so only a deterministic step can match.
    def trained(mode: str) -> dict:
        cfg = SFTConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, dropout=0.0, batch_size=4, compile=mode)
        model, vocab, _ = COMPACT.build(cfg, [4, 4], seed=0)
        rng = np.random.default_rng(0)
        examples = [Example([int(t) for t in rng.integers(3, 10, size=int(n))], 3) for n in rng.integers(5, 14, size=16)]
        optimizer, scheduler = optimizer_and_schedule(model, cfg, len(epoch_plan(examples, np.arange(16), cfg, epoch_seed(0, 0, 0))))
        trained_as = compiled(model, cfg)
        assert (trained_as is model) == (mode == "off")
        assert isinstance(trained_as, torch._dynamo.eval_frame.OptimizedModule) == (mode != "off")
        train_epoch(trained_as, optimizer, scheduler, examples, np.arange(16), cfg, vocab, 0, epoch_seed(0, 0, 0),
                    average_of=model)
        return trainable_state(model)

    eager, fused = trained("off"), trained("default")
    start, _, _ = COMPACT.build(SFTConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32), [4, 4], seed=0)
    assert any(not torch.equal(value, start.state_dict()[name]) for name, value in eager.items()), "the steps moved the weights"
    for name, value in eager.items():
        assert torch.allclose(value, fused[name], atol=1e-5), name


def test_a_token_budget_keeps_every_example_once_and_gives_short_examples_larger_batches():
    from deepinterestgr.recommender.sft_loop import epoch_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    order = rng.permutation(1000)
    for packed in (False, True):
        budget = epoch_batches(order, lengths, 32, 10, seed=1, batch_tokens=4000, packed=packed)
        assert sorted(np.concatenate(budget).tolist()) == list(range(1000))
        costs = [lengths[b].sum() if packed else len(b) * lengths[b].max() for b in budget]
        assert all(cost <= 4000 or len(b) == 1 for cost, b in zip(costs, budget)), packed
        if not packed:
            by_length = sorted(budget, key=lambda b: lengths[b].max())
            assert len(by_length[0]) > 5 * len(by_length[-1]), "short examples share a batch with many others"
    plain = epoch_batches(order, lengths, 32, 0, seed=1, batch_tokens=4000)
    assert np.array_equal(np.concatenate(plain), order), "without buckets: the order, cut in turn"
    assert [len(b) for b in epoch_batches(order, np.full(1000, 7), 32, 0, seed=1, batch_tokens=70)] == [10] * 100
    assert [len(b) for b in epoch_batches(np.array([1, 0, 2]), np.array([50, 5, 5]), 32, 0, seed=1, batch_tokens=20)] == [1, 1, 1], \
        "an example over the budget comes alone"


def test_a_worker_with_fewer_batches_splits_its_largest_to_run_as_many_steps():
    from deepinterestgr.recommender.sft_loop import even_out

    batches = [np.arange(0, 8), np.arange(8, 10), np.arange(10, 14)]
    evened = even_out(batches, 5)
    assert [len(b) for b in evened] == [2, 2, 4, 2, 4]
    assert np.array_equal(np.concatenate(evened), np.arange(14)), "every example once, in order"
    assert even_out(batches, 3) == batches
    with pytest.raises(ValueError, match="holds 2 examples for the 3 steps"):
        even_out([np.arange(1), np.arange(1, 2)], 3)


def _ddp_worker(rank: int, port: int, sizes: list[int], results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cfg = SFTConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, batch_size=4, length_buckets=2, batch_tokens=40)
    model, vocab, _ = COMPACT.build(cfg, [4, 4], seed=0)
    rng = np.random.default_rng(rank)
    examples = [Example([int(t) for t in rng.integers(3, 10, size=int(n))], 3) for n in rng.integers(4, 12, size=sizes[rank])]
    groups = np.arange(len(examples))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, len(epoch_plan(examples, groups, cfg, epoch_seed(0, 0, rank))))
    own = len(epoch_plan(examples, groups, cfg, epoch_seed(0, 0, rank)))
    train_epoch(ddp, optimizer, scheduler, examples, groups, cfg, vocab, 0, epoch_seed(0, 0, rank), average_of=model)
    results.put((rank, own, {n: v.numpy().copy() for n, v in trainable_state(model).items()}))
    torch.distributed.destroy_process_group()


def test_ddp_workers_with_unequal_shards_under_a_token_budget_run_the_same_steps_and_stay_in_sync_tiny_random_model():
    import multiprocessing
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_ddp_worker, args=(rank, port, [30, 9], results)) for rank in range(2)]
    for worker in workers:
        worker.start()
    got = dict((rank, (own, state)) for rank, own, state in (results.get(timeout=120) for _ in workers))
    for worker in workers:
        worker.join(timeout=30)
    assert all(worker.exitcode == 0 for worker in workers)
    assert got[0][0] > got[1][0], "the shards alone would run different numbers of steps"
    for name, value in got[0][1].items():
        assert np.allclose(value, got[1][1][name]), name
