"""The generated configuration reference: current in docs/, and complete (every key, with a meaning)."""

import json
import re
from pathlib import Path

from deepinterestgr.config import RunConfig
from deepinterestgr.config_reference import reference

ROOT = Path(__file__).resolve().parents[1]


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].strip("`")] = cells
    return rows


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("grid", "engine_kwargs"):
            out.update(_leaves(value, f"{prefix}{key}."))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.update(_leaves(value[0], f"{prefix}{key}[]."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_docs_config_reference_is_the_generated_page():
    written = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert written == reference(), "docs/config-reference.md is stale: run `dig config --reference > docs/config-reference.md`"


def test_every_config_key_has_a_row_with_its_default_and_a_meaning():
    rows = _rows(reference())
    leaves = _leaves(RunConfig().model_dump(mode="json"))
    missing = sorted(set(leaves) - set(rows))
    assert not missing, f"keys without a row: {missing}"
    for key, value in leaves.items():
        cells = rows[key]
        assert cells[4], f"{key} has no comment in deepinterestgr/config.py"
        if not (isinstance(value, list) and value and isinstance(value[0], dict)):
            assert cells[2] == f"`{json.dumps(value)}`", f"{key}: default {cells[2]} is not {value!r}"
