"""bench/sft_sweep.py: the sft stage's loop in a process pool reproduces the pipeline's figures, with a tiny random model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_of_tiny_run
from ray_jobs import evaluate

REPO = Path(__file__).resolve().parents[1]


def sweep(*args: str) -> dict:
    done = subprocess.run([sys.executable, "bench/sft_sweep.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_sweep_job_with_the_runs_own_settings_gives_the_pipelines_figures_with_a_tiny_random_model(tiny_run, tmp_path):
    cfg, store = copy_of_tiny_run(tiny_run, tmp_path / "run")
    trained = store.require("sft").report
    tested = evaluate.run(cfg, store).report["results"]["GR (sft) x1"]

    packed = str(tmp_path / "runs.pkl")
    assert sweep("pack", "--run", str(tmp_path / "run"), "--out", packed)["packed"] == ["default:" + f"{tmp_path.name}/run"]
    out = str(tmp_path / "sweep")
    result = sweep("run", "--data", packed, "--arm", "as_run", "--arm", "faster lr=0.01", "--arm", "random item_token_init=random",
                   "--procs", "2", "--out", out)
    assert result["jobs_run"] == 3
    as_run = next(iter(result["arms"]["as_run"]["runs"].values()))
    assert as_run["val_ndcg@10_mean"] == pytest.approx(trained["val_ndcg@10"], abs=1e-4)
    assert as_run["ndcg@10_mean"] == pytest.approx(tested["ndcg@10"], abs=1e-4)
    assert as_run["hr@10_mean"] == pytest.approx(tested["hr@10"], abs=1e-4)
    jobs = [json.loads(line) for line in Path(out, "jobs.jsonl").read_text().splitlines()]
    assert next(j for j in jobs if j["arm"] == "as_run")["best_epoch"] == trained["best_epoch"]
    faster = next(j for j in jobs if j["arm"] == "faster")
    assert (faster["val_ndcg@10"], faster["ndcg@10"]) != (as_run["val_ndcg@10_mean"], as_run["ndcg@10_mean"]), "the override took effect"
    random = next(j for j in jobs if j["arm"] == "random")
    assert random["val_ndcg@10"] != as_run["val_ndcg@10_mean"], "the run's item tokens started from content"

    again = sweep("run", "--data", packed, "--arm", "as_run", "--arm", "faster lr=0.01", "--arm", "random item_token_init=random",
                  "--procs", "2", "--out", out)
    assert again["jobs_run"] == 0 and again["arms"] == result["arms"], "a rerun skips the jobs already done"

    other = sweep("pack", "--run", str(tmp_path / "run"), "--set", "sft.max_items=3", "--out", str(tmp_path / "other.pkl"))
    assert other["packed"] == ["default:" + f"{tmp_path.name}/run sft.max_items=3"], "the same run packed with other settings is another run"

    bad = subprocess.run([sys.executable, "bench/sft_sweep.py", "run", "--data", packed, "--arm", "typo lr_max=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "'lr_max=1' is not sft_key=value" in bad.stderr
