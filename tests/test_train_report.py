"""The trainers' one-line progress reports (what replaces Ray Train's own report lines on the console)."""

from actors.train_report import progress_line


def test_progress_line_counts_epochs_from_one_and_shows_only_the_chosen_figures():
    metrics = {"epoch": 2, "loss": 2.58544, "val_hr@10": 0.13, "val_ndcg@10": 0.065702, "tokens_per_s": 9788.05, "secret": 1}
    line = progress_line("sft", 10, metrics, show=("loss", "val_hr@10", "val_ndcg@10", "epoch_s"))
    assert line == "sft epoch 3/10: loss 2.585, val_hr@10 0.13, val_ndcg@10 0.0657"


def test_progress_line_before_the_first_epoch():
    assert progress_line("grpo", 3, {"epoch": -1, "val_hr@10": 0.234}, show=("val_hr@10",)) == "grpo before training: val_hr@10 0.234"


class _RunsCode:
    """Unpickling this calls `_mark` (as a hostile file would call os.system)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


def _mark(path):
    open(path, "w").close()
    return {}


def test_a_checkpoint_is_read_as_tensors_and_plain_values_and_a_file_that_would_run_code_is_refused(tmp_path):
    import pytest
    import ray.train
    import torch

    from actors.train_report import read_checkpoint
    from deepinterestgr.errors import DataError

    good = tmp_path / "good"
    good.mkdir()
    state = {"model": {"w": torch.arange(4.0)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
             "best": 0.25, "live": None}
    torch.save(state, good / "state.pt")
    read = read_checkpoint(ray.train.Checkpoint.from_directory(str(good)), "state.pt")
    assert torch.equal(read["model"]["w"], state["model"]["w"]) and read["epoch"] == 3 and read["best"] == 0.25

    bad, marker = tmp_path / "bad", tmp_path / "code_ran"
    bad.mkdir()
    torch.save({"model": _RunsCode(str(marker))}, bad / "state.pt")
    with pytest.raises(DataError, match=r"bad/state.pt holds more than tensors and plain values"):
        read_checkpoint(ray.train.Checkpoint.from_directory(str(bad)), "state.pt")
    assert not marker.exists(), "nothing in the file ran"
