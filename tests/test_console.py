"""The console keeps our lines and drops known worker noise; the run's log keeps everything."""

import io

from ray_jobs.console import _Tee


def test_worker_noise_is_logged_but_not_shown_and_print_leaves_no_blank_line():
    console, log = io.StringIO(), io.StringIO()
    tee = _Tee(console, log)
    print("(RayTrainWorker pid=7) sft epoch 1/3: loss 2.1", file=tee)
    print("(RayTrainWorker pid=7) WARNING clustering 200 points to 32 centroids: please provide at least 1248 training points", file=tee)
    tee.write("(pid=8) Loading weights: 100%|####| 11/11\n(pid=8) tokenize: 200/200 items\n")
    print("evaluate: done", file=tee)
    assert console.getvalue() == "(RayTrainWorker pid=7) sft epoch 1/3: loss 2.1\n(pid=8) tokenize: 200/200 items\nevaluate: done\n"
    assert "please provide at least" in log.getvalue() and "Loading weights" in log.getvalue() and "evaluate: done" in log.getvalue()
