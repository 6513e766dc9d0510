"""bench/llm_quality.py fails at once, with one JSON line naming everything it cannot find, before any work."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_missing_gpu_data_and_llm_are_named_in_one_line_before_any_work(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "llm_quality.py"), "--data", str(tmp_path / "no_data"),
                           "--llm", str(tmp_path / "no_llm"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1
    [line] = done.stdout.strip().splitlines()
    record = json.loads(line)
    assert record["step"] == "inputs" and record["ok"] is False
    missing = " | ".join(record["missing"])
    import torch

    assert ("CUDA" in missing) != torch.cuda.is_available()
    assert f"{tmp_path / 'no_data'}/items.jsonl" in missing and str(tmp_path / "no_llm") in missing
    assert "text encoder" not in missing, "the bundled MiniLM is found"
    assert (out / "steps.jsonl").read_text().strip() == line, "the line is kept in the output folder"
    assert sorted(p.name for p in out.iterdir()) == ["steps.jsonl"], "nothing else was written"
