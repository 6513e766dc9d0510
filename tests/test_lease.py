"""One writer per run: a second writer is refused, a stale or orphaned lease is taken over, a writer
whose lease was taken commits nothing; locally (flock) and on S3 through moto (conditional PUTs)."""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deepinterestgr.config import load_config
from deepinterestgr.errors import StorageError
from deepinterestgr.storage.lease import LEASE_FILE, Holder, RunLease
from deepinterestgr.storage.runstore import RunStore

DIG = str(Path(sys.executable).with_name("dig"))
HOLD = """
import sys, time
from deepinterestgr.config import load_config
from deepinterestgr.storage.runstore import RunStore
with RunStore(load_config(None, sys.argv[1:])).lease("dig sft"):
    print("held", flush=True)
    time.sleep(120)
"""


def _store(uri: str, *overrides: str) -> RunStore:
    return RunStore(load_config(None, [f"storage.uri={uri}", "storage.lease_renew_s=0.2", *overrides]))


def _holder(*overrides: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, *overrides], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _foreign(age_s: float) -> dict:
    now = time.time()
    return {"owner": "other-host:4242:feedbeef", "command": "dig pipeline", "acquired_at": now - age_s, "heartbeat_at": now - age_s}


def test_a_second_writer_is_refused_until_the_holder_exits_then_takes_over_at_once(tmp_path, capfd):
    run = tmp_path / "run"
    process = _holder(f"storage.uri={run}")
    try:
        store = _store(str(run))
        for _ in range(3):
            with pytest.raises(StorageError, match=rf"being written by {socket.gethostname()}:{process.pid}:\w+ \(dig sft, heartbeat \d+ s ago\)"):
                with store.stage("prepare", "hash", {}):
                    pass
        assert store.entry("prepare") is None and not (run / "prepare").exists(), "a refused writer writes nothing"
        cli = subprocess.run([DIG, "prepare", "--run", str(run)], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and f":{process.pid}:" in cli.stderr, cli.stderr
        assert not (run / "config.yaml").exists(), "not even the config is written by a refused command"
    finally:
        process.kill()
        process.wait()
    capfd.readouterr()
    with store.stage("prepare", "hash", {}) as attempt:
        attempt.commit({}, {})
    assert f"taking over the lease of {socket.gethostname()}:{process.pid}" in capfd.readouterr().err
    assert store.entry("prepare") is not None and not (run / LEASE_FILE).exists(), "the lease is released after the stage"


def test_a_foreign_lease_is_refused_while_fresh_and_taken_over_when_stale(tmp_path):
    run = tmp_path / "run"
    store = _store(str(run), "storage.lease_timeout_s=30")
    run.mkdir(parents=True, exist_ok=True)
    (run / LEASE_FILE).write_text(json.dumps(_foreign(5)))
    with pytest.raises(StorageError, match=r"other-host:4242:feedbeef \(dig pipeline, heartbeat 5 s ago\)"):
        with store.lease("dig sft"):
            pass
    (run / LEASE_FILE).write_text(json.dumps(_foreign(31)))
    with store.lease("dig sft"):
        holder = Holder(**json.loads((run / LEASE_FILE).read_text()))
        assert holder.owner == store.lease("dig sft").owner


def test_a_writer_whose_lease_was_taken_over_commits_nothing(tmp_path):
    run = tmp_path / "run"
    store = _store(str(run))
    with pytest.raises(StorageError, match="taken over by other-host:4242:feedbeef"):
        with store.stage("prepare", "hash", {}) as attempt:
            (run / LEASE_FILE).write_text(json.dumps(_foreign(0)))
            time.sleep(0.6)
            attempt.commit({}, {})
    assert store.entry("prepare") is None
    assert json.loads((run / LEASE_FILE).read_text())["owner"] == "other-host:4242:feedbeef", "the new holder's lease stays"


def test_the_lease_is_reentrant_within_a_process_and_renewed_while_held(tmp_path):
    run = tmp_path / "run"
    store = _store(str(run))
    with store.lease("dig pipeline"):
        first = json.loads((run / LEASE_FILE).read_text())["heartbeat_at"]
        with store.stage("prepare", "hash", {}) as attempt:
            attempt.commit({}, {})
        time.sleep(0.5)
        assert (run / LEASE_FILE).exists(), "a stage inside the pipeline leaves the pipeline's lease held"
        assert json.loads((run / LEASE_FILE).read_text())["heartbeat_at"] > first
    assert not (run / LEASE_FILE).exists()


def test_on_s3_exactly_one_of_two_racing_writers_wins_and_a_stale_lease_is_taken_over(s3_bucket, monkeypatch):
    endpoint, bucket = s3_bucket
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    cfg = load_config(None, [f"storage.uri=s3://{bucket}/run", "storage.lease_timeout_s=30"])
    store = RunStore(cfg)
    for attempt in range(5):
        leases = [RunLease(store.root, f"{store.uri}", cfg.storage, f"dig writer{k}") for k in range(2)]
        outcomes, barrier = [None, None], threading.Barrier(2)

        def take(k):
            barrier.wait()
            try:
                leases[k].__enter__()
                outcomes[k] = "won"
            except StorageError as exc:
                outcomes[k] = str(exc)

        threads = [threading.Thread(target=take, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("won") == 1, outcomes
        loser = outcomes[1 - outcomes.index("won")]
        assert "is being written by" in loser and f"dig writer{outcomes.index('won')}" in loser
        leases[outcomes.index("won")].__exit__(None, None, None)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="run/_lease"), "released"
    client.put_object(Bucket=bucket, Key=f"run/{LEASE_FILE}", Body=json.dumps(_foreign(3)).encode())
    with pytest.raises(StorageError, match="other-host:4242:feedbeef"):
        with store.lease("dig sft"):
            pass
    client.put_object(Bucket=bucket, Key=f"run/{LEASE_FILE}", Body=json.dumps(_foreign(60)).encode())
    with store.lease("dig sft") as lease:
        assert json.loads(client.get_object(Bucket=bucket, Key=f"run/{LEASE_FILE}")["Body"].read())["owner"] == lease.owner
