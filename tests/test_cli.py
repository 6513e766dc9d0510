"""The `dig` console script as a user runs it: in a subprocess where the process itself is under test (its exit
status, its console and log files), else through the script's entry point (`ray_jobs.cli.main`, whose return value
is the exit status) in this process, which spares each call a `dig` process's seconds of importing torch."""

import json
import subprocess
import sys
from pathlib import Path

from ray_jobs import cli

DIG = str(Path(sys.executable).with_name("dig"))
ROOT = Path(__file__).resolve().parents[1]


def _dig(*args, cwd=None):
    return subprocess.run([DIG, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _dig_here(capsys, *args):
    """(exit status, stdout, stderr) of `dig *args` called in this process."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_pipeline_with_an_unknown_stage_names_it_and_runs_nothing(tmp_path):
    result = _dig("pipeline", "--stages", "prepare,mine,train", "--run", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "'train'" in result.stderr
    assert not (tmp_path / "run" / "manifest").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_bad_override_names_the_key(capsys):
    code, _, err = _dig_here(capsys, "prepare", "--set", "data.kcore=lots")
    assert code == 2 and "data.kcore" in err


def test_unknown_stage_lists_the_stages(capsys):
    code, _, err = _dig_here(capsys, "train")
    assert code == 2 and "prepare" in err


def test_prepare_via_python_dash_m_saves_resolved_config(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.prepare", "--run", str(run), "--set", "data.synthetic.num_items=30",
         "--set", "data.synthetic.num_users=20", "--set", "ray.num_cpus=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["before_filter"]["items"] == 30 and report["evaluated_users"] == 20
    assert "num_items: 30" in (run / "config.yaml").read_text()
    # Ray Data's INFO progress blocks go to the run's log file, not to a console that is not a terminal
    assert "logging_progress" not in result.stderr and "streaming_executor" not in result.stderr, result.stderr[-2000:]
    log = (run / "logs" / "prepare.log").read_text()
    assert "streaming_executor" in log and '"evaluated_users": 20' in log, "Ray's INFO lines and the console's, in the log"
    assert "Progress bars disabled" in log and "Progress bars disabled" not in result.stderr, "a harmless warning: log only"


def test_config_prints_the_effective_config_and_a_bad_one_as_one_error_line(capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(ROOT)
    code, out, err = _dig_here(capsys, "config", "--config", "configs/amazon_office.yaml", "--set", "seed=3", "--run", "runs/x")
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert (shown["seed"], shown["storage"]["uri"], shown["sft"]["members"]) == (3, "runs/x", 4), "file and overrides applied"
    assert shown["evaluate"]["sasrec"]["grid"]["dropout"] == [0.2, 0.5] and shown["evaluate"]["sasrec"]["members"] is None, "defaults filled in"
    code, out, err = _dig_here(capsys, "config", "--show", "--set", "evaluate.sasrec.members=0")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "dig config: error:" in err and "evaluate.sasrec.members" in err


def test_a_run_without_config_starts_from_its_own_config_yaml_and_keeps_its_own_stages(tmp_path, capsys, s3_bucket, monkeypatch):
    import yaml

    from deepinterestgr.config import load_config
    from deepinterestgr.storage.runstore import RunStore
    from ray_jobs import config
    from ray_jobs.common import config_from

    def shown(*argv):
        assert config.main(list(argv)) == 0
        out = capsys.readouterr()
        return yaml.safe_load(out.out), out.err

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for run in (str(tmp_path / "run"), f"s3://{bucket}/run"):
        fresh, err = shown("--run", run)
        assert fresh["sft"]["members"] == 1 and "config:" not in err, "a new run: the code defaults"
        made = load_config(None, [f"storage.uri={run}", "sft.members=3", "sft.item_tokens=true", "pipeline.stages=[prepare,sft]"])
        RunStore(made).save_config(made)
        later, err = shown("--run", run, "--set", "sft.item_token_init=content")
        assert (later["sft"]["members"], later["sft"]["item_token_init"]) == (3, "content"), "the run's keys, then --set"
        assert "the run's own" in err and run.rstrip("/").split("/")[-1] in err
        chosen, _ = shown("--config", "configs/default.yaml", "--run", run)
        assert chosen["sft"]["members"] == 2, "--config still wins over the run's file"

    # `dig pipeline --stages` picks one invocation's stages: the run's config.yaml keeps the run's own
    from argparse import Namespace

    from ray_jobs.pipeline import remembered

    subset = Namespace(config=None, set=["sft.epochs=4"], run=str(tmp_path / "run"), stages="prepare")
    kept = remembered(config_from(subset, "pipeline.stages=[prepare]"), subset)
    assert kept.pipeline.stages == ["prepare", "sft"] and kept.sft.epochs == 4

    (tmp_path / "run" / "config.yaml").write_text("sft: [not, a, mapping")
    assert config.main(["--run", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run'}/config.yaml is not valid YAML" in capsys.readouterr().err
