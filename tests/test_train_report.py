"""The trainers' one-line progress reports (what replaces Ray Train's own report lines on the console)."""

from actors.train_report import progress_line


def test_progress_line_counts_epochs_from_one_and_shows_only_the_chosen_figures():
    metrics = {"epoch": 2, "loss": 2.58544, "val_hr@10": 0.13, "val_ndcg@10": 0.065702, "tokens_per_s": 9788.05, "secret": 1}
    line = progress_line("sft", 10, metrics, show=("loss", "val_hr@10", "val_ndcg@10", "epoch_s"))
    assert line == "sft epoch 3/10: loss 2.585, val_hr@10 0.13, val_ndcg@10 0.0657"


def test_progress_line_before_the_first_epoch():
    assert progress_line("grpo", 3, {"epoch": -1, "val_hr@10": 0.234}, show=("val_hr@10",)) == "grpo before training: val_hr@10 0.234"
