"""bench/gpu_check.sh --cpu: the steps the GPU check runs on a lent GPU, tiny, on this machine (random-weight models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = ["models", "env", "prepare", "tokenize", "sft", "grpo", "evaluate", "llm_sft", "beam_search_bench"]


def _run(*args: str, timeout: float) -> tuple[int, list[dict], str]:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, lines, done.stderr


def test_gpu_check_cpu_mode_runs_every_step_in_order_with_random_weight_models(tmp_path):
    code, lines, stderr = _run("--cpu", "--out", str(tmp_path / "check"), timeout=900)
    assert code == 0, stderr[-4000:]
    assert [line["step"] for line in lines] == STEPS
    assert all(line["ok"] and line["seconds"] > 0 for line in lines)
    by_step = {line["step"]: line for line in lines}
    assert by_step["env"]["device"] == "cpu" and by_step["env"]["cluster_gpus"] == 0
    assert all(line["peak_gpu_mb"] is None for line in lines)
    # Every stage saw the whole synthetic catalog and ranked every test user.
    assert by_step["prepare"]["interactions"] >= by_step["prepare"]["users"] * 5
    assert by_step["evaluate"]["test_users"] == by_step["prepare"]["users"]
    assert 0.0 <= by_step["evaluate"]["ndcg@10"] <= 1.0
    assert by_step["sft"]["tokens_per_s"] > 0 and by_step["llm_sft"]["tokens_per_s"] > 0
    assert by_step["llm_sft"]["layers"] == 2  # the narrow copy of SmolLM2's architecture
    bench = by_step["beam_search_bench"]
    assert bench["device"] == "cpu" and bench["identical_top_k_sets"] == 1.0


def test_gpu_check_stops_at_the_first_failed_step_with_a_line_naming_it(tmp_path):
    code, lines, _ = _run("--cpu", "--out", str(tmp_path / "check"), "--assets", str(tmp_path / "missing"), timeout=300)
    assert code == 1
    assert lines == [{"step": "models", "ok": False, "error": lines[0]["error"]}]
    assert "missing" in lines[0]["error"]
