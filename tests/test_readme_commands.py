"""Every command in README.md's bash blocks, checked as a user would type it.

`dig` commands: their config (file, `--set`, `--run`) is valid, through `dig config` with the same
arguments; the own-data example runs its first stage as written on `examples/shop`. Benchmarks: every
flag the README passes is one the script accepts. `curl` bodies are valid requests. Cluster-only
commands are marked so in the README and name files that exist. The whole pipeline is run by
tests/test_pipeline.py and the demo by CI's users; here only what a README can get wrong.
"""

import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs import cli
from ray_jobs.cli import STAGES
from deepinterestgr.recommender.request import RecommendRequest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DIG = str(Path(sys.executable).with_name("dig"))
CLUSTER_ONLY = ("ray up", "ray job submit", "serve deploy")


def _blocks() -> list[tuple[str, list[str]]]:
    """Each bash block's text and its commands: continuation lines joined, comments and `./install.sh &&` dropped."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        lines = body.replace("\\\n", " ").splitlines()
        commands = [re.sub(r"\s+#\s.*$", "", line).strip().removeprefix("./install.sh && ") for line in lines]
        blocks.append((body, [c for c in commands if c and not c.startswith("#")]))
    return blocks


def _commands() -> list[str]:
    return [c for _, block in _blocks() for c in block]


def _dig_args(command: str) -> tuple[str, list[str]] | None:
    words = shlex.split(command)
    if words[0] in ("dig", ".venv/bin/dig"):
        return words[1], words[2:]
    if words[:3] in (["python", "-m", "ray_jobs.pipeline"], [".venv/bin/python", "-m", "ray_jobs.pipeline"]):
        return "pipeline", words[3:]
    return None


def test_the_readme_is_a_guide_with_own_data_in_its_first_100_lines():
    lines = README.splitlines()
    assert len(lines) <= 350
    assert any(line.startswith("## Your own data") for line in lines[:100])


def test_every_readme_command_is_one_this_file_checks():
    for command in _commands():
        known = (_dig_args(command) is not None or command.startswith((".venv/bin/python bench/", ".venv/bin/python -m pytest", "curl "))
                 or any(command.startswith(prefix) for prefix in CLUSTER_ONLY))
        assert known, f"README command not checked by a test: {command!r}"


def test_cluster_only_commands_are_marked_and_name_files_that_exist():
    for body, block in _blocks():
        if any(c.startswith(CLUSTER_ONLY) for c in block):
            assert body.startswith("# cluster-only"), f"a block with cluster commands is not marked cluster-only: {block}"
    for path in ("cluster.yaml", "serving/serve_config.yaml", "configs/gpu_cluster.yaml"):
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("command", [c for c in _commands() if _dig_args(c)], ids=lambda c: " ".join(shlex.split(c)[1:3]))
def test_dig_commands_name_a_stage_and_a_valid_config(command, monkeypatch, capsys):
    stage, args = _dig_args(command)
    assert stage in STAGES
    # `dig config` through the console script's own entry point, in this process (a `dig` process spends its
    # first seconds importing torch): the same arguments, from the clone's root as the README runs them.
    monkeypatch.chdir(ROOT)
    assert cli.main(["config", *args]) == 0, f"{command}: {capsys.readouterr().err}"
    assert capsys.readouterr().out.startswith("name:"), "the effective config was printed"


def test_the_own_data_example_prepares_as_written(tmp_path):
    command = next(c for c in _commands() if "examples/shop" in c and _dig_args(c)[0] == "pipeline")
    args = _dig_args(command)[1]
    run = tmp_path / "shop"
    args[args.index("--run") + 1] = str(run)
    result = subprocess.run([DIG, "prepare", *args, "--set", "ray.num_cpus=1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    items = sum(1 for _ in (ROOT / "examples" / "shop" / "items.jsonl").open())
    users = sum(1 for _ in (ROOT / "examples" / "shop" / "sequences.jsonl").open())
    assert report["before_filter"]["items"] == items and report["evaluated_users"] == users


def _flags(script: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return found


def test_benchmark_commands_pass_flags_their_script_accepts():
    for command in _commands():
        if command.startswith(".venv/bin/python bench/"):
            words = shlex.split(command)
            script = ROOT / words[1]
            assert script.is_file(), command
            unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - _flags(script)
            assert not unknown, f"{command}: {script.name} takes no {sorted(unknown)}"


def test_curl_bodies_are_valid_requests():
    bodies = [shlex.split(c)[shlex.split(c).index("-d") + 1] for c in _commands() if c.startswith("curl ") and " -d " in c]
    assert bodies
    for body in bodies:
        RecommendRequest.model_validate(json.loads(body))


def test_ci_runs_the_readmes_test_command():
    test_command = next(c for c in _commands() if c.startswith(".venv/bin/python -m pytest"))
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(f"./install.sh && {test_command}")
