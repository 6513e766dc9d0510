"""The whole pipeline as a user runs it: `dig pipeline` on a two-node Ray cluster started with
`ray start`, submitted with `ray job submit`, losing its worker node during mining; cluster.yaml and
the GPU config validated offline."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from ray.util.state import list_actors, list_nodes, list_tasks
import pytest
import yaml

from chat_server import ChatServer
from conftest import REPO, free_port
from deepinterestgr.config import load_config

BIN = Path(sys.executable).parent


def test_cluster_yaml_passes_rays_own_validation_and_a_broken_copy_does_not():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cluster)))
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu) >= 2 and all(t["min_workers"] < t["max_workers"] for t in gpu)
    assert any("install" in c and "deepinterestgr" in c for c in cluster["setup_commands"])
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_training"]["max_workers"] = "lots"
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


def test_gpu_config_selects_vllm_miners_qwen_and_bf16_on_s3():
    cfg = load_config(REPO / "configs" / "gpu_cluster.yaml")
    assert cfg.storage.uri.startswith("s3://")
    assert all(m.backend == "vllm" and m.num_gpus >= 1 for m in cfg.mine.miners)
    assert any("Qwen" in m.model for m in cfg.mine.miners) and cfg.mine.captioner.backend == "vllm"
    assert cfg.sft.backbone == "llm" and cfg.sft.llm.bf16 and cfg.sft.use_gpu and "Qwen" in cfg.sft.llm.model
    assert cfg.tokenize.rqvae.use_gpu and cfg.tokenize.embed_num_gpus > 0 and cfg.evaluate.num_gpus > 0


def _ray(*args, env, check=True):
    result = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"ray {' '.join(args[:3])} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def _job_client(address: str, timeout_s: float = 120):
    """A job client once the head's job server answers (it starts after `ray start` returns)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + timeout_s
    while True:
        try:
            client = JobSubmissionClient(address)
            client.list_jobs()
            return client
        except Exception:  # noqa: BLE001 - not up yet: connection refused, 5xx, ...
            if time.time() > deadline:
                raise
            time.sleep(1)


def _kill_node(node_manager_port: int) -> int:
    """SIGKILL the raylet of the node started with this port, and every worker process under it."""
    killed = 0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "raylet" in cmdline and f"--node_manager_port={node_manager_port}" in cmdline:
            for child in process.children(recursive=True) + [process]:
                try:
                    child.send_signal(signal.SIGKILL)
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
    return killed


def _kill_cluster(temp: Path) -> None:
    """Stop only this test's cluster (`ray stop` would also stop the test session's own cluster)."""
    for process in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(process.info["cmdline"] or []):
            for child in process.children(recursive=True) + [process]:
                try:
                    child.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass


def _wait(client, job: str, timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = str(client.get_job_status(job)).rsplit(".", 1)[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(f"job {job} did not finish in {timeout_s} s:\n{client.get_job_logs(job)[-3000:]}")


def test_pipeline_job_on_two_nodes_survives_losing_the_worker_during_mining(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp = Path("/tmp") / f"dig-mn-{os.getpid()}"
    port, dashboard, worker_port = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    env.pop("RAY_ADDRESS_GCS", None)
    # Every per-node port is chosen here: the test session's own cluster already holds Ray's defaults.
    def node_ports() -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    _ray("start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         "--num-cpus=1", f"--temp-dir={temp}", *node_ports(), env={k: v for k, v in env.items() if k != "RAY_ADDRESS"})
    try:
        _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--node-manager-port={worker_port}", *node_ports(),
             env={k: v for k, v in env.items() if k != "RAY_ADDRESS"})
        with ChatServer(slow_s=0.3) as server:
            run = tmp_path / "run"
            http = {"backend": "http", "model": "fake", "base_url": server.url, "max_retries": 2, "backoff_s": 0.05,
                    "max_in_flight": 2, "concurrency": 2}
            config = {
                "seed": 0, "storage": {"uri": str(run)}, "ray": {"address": "auto"},
                # sft, grpo and evaluate have their own stage tests; here the item dataset's path matters.
                "pipeline": {"stages": ["prepare", "mine", "label", "tokenize"]},
                "data": {"loader": "synthetic", "synthetic": {"num_items": 40, "num_users": 40}},
                "mine": {"miners": [{"name": "fake", **http, "concurrency": 4}], "user_interests": False, "flush_rows": 4},
                "label": {"judge": {"name": "judge", **http}, "judge_sample": 40, "epochs": 50},
                "tokenize": {"method": "rkmeans", "rqvae": {"codebook_size": 8, "levels": 2}},
            }
            # Slow answers keep mining going long enough to lose the worker node in the middle of it.
            (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
            entry = [sys.executable, "-m", "ray_jobs.pipeline", "--config", str(tmp_path / "tiny.yaml")]

            client = _job_client(env["RAY_ADDRESS"])

            def submit(job: str) -> str:
                # The head's job agent comes up a little after its job server: retry until it takes the job.
                args = ("job", "submit", "--no-wait", "--submission-id", job, "--address", env["RAY_ADDRESS"], "--", *entry)
                deadline = time.time() + 120
                while "No available agent" in (result := _ray(*args, env=env, check=False)).stderr and time.time() < deadline:
                    time.sleep(2)
                assert result.returncode == 0, result.stderr[-2000:]
                return job

            job = submit("dig-pipeline-1")

            deadline = time.time() + 240
            while len(server.requests) < 12 and time.time() < deadline:
                time.sleep(0.2)
            nodes = {n.node_id for n in list_nodes(address=env["RAY_ADDRESS"])}
            assert len(nodes) == 2
            assert _kill_node(worker_port) > 0, "the worker node's raylet was found and killed"
            status = _wait(client, job, 420)
            if status != "SUCCEEDED":
                # The rerun resumes from the manifest and the mining cache.
                job = submit("dig-pipeline-2")
                status = _wait(client, job, 420)
            logs = client.get_job_logs(job)
            assert status == "SUCCEEDED", logs[-3000:]

            worked = {t.node_id for t in list_tasks(address=env["RAY_ADDRESS"], limit=10_000, raise_on_missing_output=False)}
            worked |= {a.node_id for a in list_actors(address=env["RAY_ADDRESS"], limit=10_000, raise_on_missing_output=False)}
        assert nodes <= worked, "tasks or actors ran on both nodes (the worker's before it was killed)"
        cfg = load_config(tmp_path / "tiny.yaml")
        from deepinterestgr.storage.runstore import RunStore

        store = RunStore(cfg)
        items = store.read_table("mine", "items").column("item_id").to_pylist()
        catalog = store.read_table("prepare", "items").column("item_id").to_pylist()
        assert sorted(items) == sorted(catalog) and len(set(items)) == len(items), "every item exactly once"
        for stage in ("mine", "label", "tokenize"):
            assert store.entry(stage) is not None, f"{stage} committed"
        assert store.entry("label").inputs["mine"] == store.entry("mine").fingerprint
        assert "pipeline: tokenize done" in logs and "SIDs: collisions" in logs
    finally:
        _kill_cluster(temp)
