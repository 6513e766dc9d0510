"""The parquet loader: interactions through Ray Data end to end (local files and S3 on moto), the same
k-core and split as the in-driver path, and clear errors for bad input."""

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepinterestgr.config import load_config
from deepinterestgr.data.filtering import kcore, leave_last_out
from deepinterestgr.data.registry import load_raw
from deepinterestgr.errors import DataError
from deepinterestgr.storage.runstore import RunStore
from ray_jobs import prepare


@pytest.fixture(scope="module")
def ml100k(shared_data):
    """ml-100k's tables as the recbole loader reads them."""
    return load_raw(load_config(None, ["data.loader=recbole", f"data.path={shared_data / 'ml-100k'}"]).data, 0)


def _write(folder, raw, files=3):
    """items.parquet and interactions/ cut into `files` files (so Ray Data reads several blocks)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(raw.items.select(["item_id", "title"]), folder / "items.parquet")
    (folder / "interactions").mkdir()
    rows = raw.interactions.num_rows
    for part in range(files):
        pq.write_table(raw.interactions.slice(part * rows // files, (part + 1) * rows // files - part * rows // files),
                       folder / "interactions" / f"part{part}.parquet")


def _sorted(table):
    return table.select(["user_id", "item_id", "timestamp", "split"]).sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending"), ("item_id", "ascending")])


def test_parquet_loader_gives_the_in_driver_kcore_and_split(ray_cluster, ml100k, tmp_path):
    _write(tmp_path / "data", ml100k)
    cfg = load_config(None, ["data.loader=parquet", f"data.path={tmp_path / 'data'}", "data.kcore=10",
                             "data.block_rows=20000", f"storage.uri={tmp_path / 'run'}"])
    store = RunStore(cfg)
    entry = prepare.run(cfg, store).entry
    expected, passes = kcore(ml100k.interactions, 10)
    expected = leave_last_out(expected, tiebreak="item_id")
    assert _sorted(store.read_table("prepare", "interactions")).equals(_sorted(expected))
    report = entry.report
    assert report["kcore"]["passes"] == passes and report["before_filter"] == {"users": 943, "items": 1682, "interactions": 100_000}
    assert report["after_filter"]["interactions"] == expected.num_rows and report["split"]["test"] == 943
    assert store.read_table("prepare", "items").num_rows == report["after_filter"]["items"] < 1682
    assert prepare.run(cfg, store).entry.attempt == entry.attempt, "unchanged files: skipped"


def test_parquet_loader_reads_from_s3(ray_cluster, ml100k, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    _write(tmp_path / "data", ml100k, files=2)
    client = boto3.client("s3", endpoint_url=endpoint)
    for file in (tmp_path / "data").rglob("*.parquet"):
        client.upload_file(str(file), bucket, f"input/{file.relative_to(tmp_path / 'data')}")
    cfg = load_config(None, ["data.loader=parquet", f"data.path=s3://{bucket}/input", f"storage.s3_endpoint={endpoint}",
                             f"storage.uri={tmp_path / 'run'}"])
    report = prepare.run(cfg, RunStore(cfg)).entry.report
    assert report["after_filter"] == {"users": 943, "items": 1682, "interactions": 100_000}
    assert report["split"] == {"train": 100_000 - 2 * 943, "valid": 943, "test": 943}


def test_parquet_loader_names_the_bad_column_file_and_unknown_items(ray_cluster, tmp_path):
    data = tmp_path / "data"
    (data / "interactions").mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["A", "B"]}), data / "items.parquet")
    good = pa.table({"user_id": ["u"] * 4, "item_id": ["a", "b", "a", "zz"], "timestamp": [1, 2, 3, 4]})
    pq.write_table(good, data / "interactions" / "part0.parquet")

    def run(*extra):
        cfg = load_config(None, ["data.loader=parquet", f"data.path={data}", f"storage.uri={tmp_path / 'run'}", *extra])
        return prepare.run(cfg, RunStore(cfg)).entry

    with pytest.raises(DataError, match=r"1 interaction\(s\) name item ids missing from the catalog, e.g. \['zz'\]"):
        run()
    assert run("data.drop_bad_rows=true").report["dropped_rows"] == {"unknown_item_interactions": 1}
    pq.write_table(good.set_column(2, "timestamp", pa.array(["x"] * 4)), data / "interactions" / "part0.parquet")
    with pytest.raises(DataError, match=r"interactions: column 'timestamp' has type string, expected integer"):
        run()
    pq.write_table(good.drop_columns(["user_id"]), data / "interactions" / "part0.parquet")
    with pytest.raises(DataError, match=r"interactions: missing column 'user_id'"):
        run()
    with pytest.raises(DataError, match=r"neither items.parquet nor a folder items/"):
        run(f"data.path={tmp_path / 'nowhere'}")


def test_synthetic_catalog_of_several_user_blocks_is_drawn_on_ray_data(ray_cluster, tmp_path):
    """Five user blocks drawn by Ray tasks: the same split as the in-driver generator's tables give, the
    user truth written from the blocks, and the blocks' streams independent of where they run."""
    sets = ["data.synthetic.num_users=230", "data.synthetic.num_items=120", "data.synthetic.block_users=50",
            "data.synthetic.images=false", "data.kcore=3", f"storage.uri={tmp_path / 'run'}"]
    cfg = load_config(None, sets)
    store = RunStore(cfg)
    report = prepare.run(cfg, store).entry.report
    raw = load_raw(cfg.data, cfg.seed)
    expected, passes = kcore(raw.interactions, 3)
    expected = leave_last_out(expected, tiebreak="item_id")
    assert _sorted(store.read_table("prepare", "interactions")).equals(_sorted(expected))
    assert report["kcore"]["passes"] == passes and report["before_filter"]["users"] == 230
    truth = store.read_table("prepare", "user_truth").sort_by("user_id")
    assert truth.to_pylist() == raw.extras["user_truth"].to_pylist() and truth.num_rows == 230
    assert store.read_table("prepare", "items").column("image_uri").null_count == report["after_filter"]["items"]
