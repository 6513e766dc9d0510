"""The prepare stage for real: Ray Data on the shared local cluster, local and S3 (moto) run storage."""

import boto3
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from deepinterestgr.config import load_config
from deepinterestgr.errors import StorageError
from deepinterestgr.storage.runstore import RunStore, StageAttempt
from ray_jobs import prepare
from ray_jobs.common import to_table

SMALL = ["data.synthetic.num_items=40", "data.synthetic.num_users=30"]


def _attempts(store, stage="prepare"):
    from pyarrow import fs as pafs

    return sorted(i.base_name for i in store.fs.get_file_info(pafs.FileSelector(f"{store.root}/{stage}", allow_not_found=True)))


def test_prepare_ml100k_reports_counts_and_split(ray_cluster, shared_data, tmp_path):
    cfg = load_config(None, ["data.loader=recbole", f"data.path={shared_data / 'ml-100k'}", f"storage.uri={tmp_path}"])
    out = prepare.run(cfg, RunStore(cfg))
    report = out.entry.report
    assert report["before_filter"] == {"users": 943, "items": 1682, "interactions": 100_000}
    assert report["split"] == {"train": 100_000 - 2 * 943, "valid": 943, "test": 943}
    table = to_table(out.interactions)
    assert table.num_rows == 100_000
    # the test target of each user is their latest interaction
    latest = table.group_by("user_id").aggregate([("timestamp", "max")])
    tests = table.filter(pc.equal(table["split"], "test")).join(latest, "user_id")
    assert pc.all(pc.equal(tests["timestamp"], tests["timestamp_max"])).as_py()


def test_same_seed_same_output_and_rerun_is_skipped(ray_cluster, tmp_path):
    tables = []
    for run in ("a", "b"):
        cfg = load_config(None, SMALL + [f"storage.uri={tmp_path / run}", "seed=5"])
        store = RunStore(cfg)
        first = prepare.run(cfg, store)
        tables.append(to_table(first.interactions).sort_by([("user_id", "ascending"), ("timestamp", "ascending")]))
        again = prepare.run(cfg, store)
        assert again.entry.attempt == first.entry.attempt, "unchanged config and inputs must skip the stage"
    assert tables[0].equals(tables[1])
    changed = load_config(None, SMALL + [f"storage.uri={tmp_path / 'a'}", "seed=6"])
    assert prepare.run(changed, RunStore(changed)).entry.attempt != first.entry.attempt


def test_failed_stage_leaves_previous_commit_and_no_partial_output(ray_cluster, tmp_path, monkeypatch):
    cfg = load_config(None, SMALL + [f"storage.uri={tmp_path}"])
    store = RunStore(cfg)
    committed = prepare.run(cfg, store).entry
    items_before = store.read_table("prepare", "items")

    original = StageAttempt.write_table

    def crash_on_items(self, name, table):
        if name == "items":
            raise RuntimeError("disk full")
        return original(self, name, table)

    monkeypatch.setattr(StageAttempt, "write_table", crash_on_items)
    changed = load_config(None, SMALL + [f"storage.uri={tmp_path}", "seed=1"])
    with pytest.raises(RuntimeError, match="disk full"):
        prepare.run(changed, RunStore(changed))
    assert _attempts(store) == [committed.attempt]
    assert store.entry("prepare").attempt == committed.attempt
    assert store.read_table("prepare", "items").equals(items_before)

    monkeypatch.undo()
    resumed = prepare.run(changed, RunStore(changed)).entry
    assert resumed.attempt != committed.attempt and _attempts(store) == [resumed.attempt]


def test_orphans_of_a_killed_run_are_removed(ray_cluster, tmp_path):
    cfg = load_config(None, SMALL + [f"storage.uri={tmp_path}"])
    store = RunStore(cfg)
    store.fs.create_dir(f"{store.root}/prepare/20260101T000000-deadbeef/items", recursive=True)
    entry = prepare.run(cfg, store).entry
    assert _attempts(store) == [entry.attempt]


def test_a_resumable_stage_keeps_a_failed_attempt_for_its_own_config_and_inputs_only(tmp_path):
    store = RunStore(load_config(None, [f"storage.uri={tmp_path}"]))
    with pytest.raises(RuntimeError, match="driver lost"):
        with store.stage("sft", "config-a", {"prepare": "prepare:1"}, resumable=True) as failed:
            failed.write_atomic("trained_members/0.json", b"{}")
            raise RuntimeError("driver lost")
    assert _attempts(store, "sft") == [failed.attempt], "a resumable stage's failed attempt is kept"

    with store.stage("sft", "config-a", {"prepare": "prepare:1"}, resumable=True) as again:
        assert again.resumed and again.attempt == failed.attempt
        assert again.read_text("trained_members/0.json") == "{}"
        again.commit({}, {})
    assert store.entry("sft").attempt == failed.attempt

    with pytest.raises(RuntimeError):
        with store.stage("sft", "config-a", {"prepare": "prepare:2"}, resumable=True) as other_inputs:
            raise RuntimeError("driver lost")
    with store.stage("sft", "config-b", {"prepare": "prepare:2"}, resumable=True) as other_config:
        assert not other_config.resumed and other_config.read_text("trained_members/0.json") is None
        assert set(_attempts(store, "sft")) == {failed.attempt, other_config.attempt}, \
            "an attempt of other inputs is removed, the commit kept"
    assert other_inputs.attempt not in (failed.attempt, other_config.attempt)


def test_s3_round_trip_through_moto(ray_cluster, s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = load_config(None, SMALL + [f"storage.uri=s3://{bucket}/runs/demo", f"storage.s3_endpoint={endpoint}"])
    store = RunStore(cfg)
    store.save_config(cfg)
    out = prepare.run(cfg, store)
    assert out.interactions.count() == out.entry.rows["interactions"]

    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert "runs/demo/manifest/prepare.json" in keys and "runs/demo/config.yaml" in keys
    attempt = out.entry.attempt
    assert any(k.startswith(f"runs/demo/prepare/{attempt}/interactions/") and k.endswith(".parquet") for k in keys)

    fresh = RunStore(cfg)  # a new process would see the same commit
    items = fresh.read_table("prepare", "items")
    uri = items["image_uri"][0].as_py()
    assert uri.startswith(f"s3://{bucket}/runs/demo/prepare/{attempt}/images/")
    with fresh.fs.open_input_stream(uri[len("s3://"):]) as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert prepare.run(cfg, fresh).entry.attempt == attempt


def test_unreachable_s3_endpoint_is_a_clear_error(s3_endpoint):
    cfg = load_config(None, ["storage.uri=s3://bucket/run", "storage.s3_endpoint=http://127.0.0.1:9",
                             "storage.s3_connect_timeout_s=1", "storage.s3_max_attempts=1"])
    with pytest.raises(StorageError, match=r"cannot reach S3 for s3://bucket/run \(endpoint http://127.0.0.1:9\)"):
        RunStore(cfg)


def test_missing_bucket_is_a_clear_error(s3_endpoint):
    cfg = load_config(None, ["storage.uri=s3://no-such-bucket/run", f"storage.s3_endpoint={s3_endpoint}"])
    with pytest.raises(StorageError, match="bucket 'no-such-bucket'.*does not exist"):
        RunStore(cfg)


def test_prepare_writes_parquet_readable_without_ray(ray_cluster, tmp_path):
    cfg = load_config(None, SMALL + [f"storage.uri={tmp_path}"])
    entry = prepare.run(cfg, RunStore(cfg)).entry
    items = pq.read_table(tmp_path / "prepare" / entry.attempt / "items")
    assert items.num_rows == entry.rows["items"] == 40
    assert set(pq.read_table(tmp_path / "prepare" / entry.attempt / "interactions").column("split").to_pylist()) == {
        "train", "valid", "test"}


def test_a_run_adopts_another_runs_committed_prepare_and_skips_it(ray_cluster, tmp_path):
    cfg = load_config(None, SMALL + [f"storage.uri={tmp_path / 'source'}"])
    source = RunStore(cfg)
    committed = prepare.run(cfg, source).entry
    copy_cfg = load_config(None, SMALL + [f"storage.uri={tmp_path / 'copy'}"])
    copy = RunStore(copy_cfg)
    copy.adopt(source, ("prepare",))
    assert copy.entry("prepare") == committed
    assert copy.read_table("prepare", "interactions").equals(source.read_table("prepare", "interactions"))
    assert prepare.run(copy_cfg, copy).entry.attempt == committed.attempt, "the adopted stage is fresh: skipped"
    with pytest.raises(StorageError, match="no committed 'tokenize'"):
        copy.adopt(source, ("tokenize",))
