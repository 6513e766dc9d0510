"""Raw input files that cannot be read, or hold fields of the wrong type: one clear error, or a counted drop.

A corpus by class (unreadable bytes, broken compression, wrong path kinds, wrong field types) over all
three file loaders, so a new loader or field inherits the same answers.
"""

import gzip
import json
import os

import pytest

from deepinterestgr.config import DataConfig
from deepinterestgr.data.registry import load_raw
from deepinterestgr.errors import DataError
from ray_jobs import prepare

ITEMS = [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B"}, {"item_id": "c", "title": "C"}]
SEQUENCES = [{"user_id": "u", "item_ids": ["a", "b", "c"]}, {"user_id": "v", "item_ids": ["b", "c"]}]


def _lines(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _jsonl(tmp_path, items: bytes, sequences: bytes) -> DataConfig:
    (tmp_path / "items.jsonl").write_bytes(items)
    (tmp_path / "sequences.jsonl").write_bytes(sequences)
    return DataConfig(loader="jsonl", path=str(tmp_path))


def _amazon(tmp_path, meta: bytes, reviews: bytes, gz: bool = True) -> DataConfig:
    suffix = ".json.gz" if gz else ".json"
    meta_path, reviews_path = tmp_path / f"meta_X{suffix}", tmp_path / f"X_5{suffix}"
    meta_path.write_bytes(gzip.compress(meta, mtime=0) if gz else meta)
    reviews_path.write_bytes(gzip.compress(reviews, mtime=0) if gz else reviews)
    return DataConfig(loader="amazon", path=str(reviews_path), meta_path=str(meta_path))


META = [{"asin": i["item_id"], "title": i["title"]} for i in ITEMS]
REVIEWS = [{"reviewerID": "u", "asin": a, "unixReviewTime": t} for t, a in enumerate("abc")]


def _recbole(tmp_path, inter: bytes, item: bytes = b"item_id:token\ttitle:token_seq\na\tA\nb\tB\nc\tC\n") -> DataConfig:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_bytes(inter)
    (folder / "toy.item").write_bytes(item)
    return DataConfig(loader="recbole", path=str(folder))


INTER = b"user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\t2\nv\tc\t3\n"


@pytest.mark.parametrize("cut", [10, 0.5, -4])
def test_cut_off_gzip_names_the_file(tmp_path, cut):
    cfg = _amazon(tmp_path, _lines(META * 50), _lines(REVIEWS))
    data = (tmp_path / "meta_X.json.gz").read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    (tmp_path / "meta_X.json.gz").write_bytes(data[:end])
    with pytest.raises(DataError, match=r"meta_X\.json\.gz:\d+: compressed data is cut off or corrupt"):
        load_raw(cfg, seed=0)


def test_corrupt_gzip_and_not_gzip_at_all(tmp_path):
    cfg = _amazon(tmp_path, _lines(META), _lines(REVIEWS))
    data = bytearray((tmp_path / "X_5.json.gz").read_bytes())
    data[20:30] = b"\xff" * 10
    (tmp_path / "X_5.json.gz").write_bytes(bytes(data))
    # gzip checks its CRC only at the end: garbage may decode first and fail as text on its line.
    with pytest.raises(DataError, match=r"X_5\.json\.gz:\d+: (compressed data is cut off or corrupt|bytes that are not UTF-8)"):
        load_raw(cfg, seed=0)
    (tmp_path / "X_5.json.gz").write_bytes(_lines(REVIEWS))
    with pytest.raises(DataError, match=r"X_5\.json\.gz:1: compressed data"):
        load_raw(cfg, seed=0)


def test_bytes_that_are_not_utf8_name_file_and_line_or_are_dropped(tmp_path):
    latin1 = json.dumps({"item_id": "b", "title": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    items = _lines(ITEMS[:1]) + latin1 + b"\n" + _lines(ITEMS[2:])
    cfg = _jsonl(tmp_path, items, _lines(SEQUENCES))
    with pytest.raises(DataError, match=r"items\.jsonl:2: bytes that are not UTF-8"):
        load_raw(cfg, seed=0)
    cfg.drop_bad_rows = True
    raw = load_raw(cfg, seed=0)
    assert raw.dropped == {"undecodable_lines": 1, "unknown_item_interactions": 2}
    assert sorted(raw.items.column("item_id").to_pylist()) == ["a", "c"]


def test_utf8_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    cfg = _jsonl(tmp_path, b"\xef\xbb\xbf" + _lines(ITEMS), _lines(SEQUENCES))
    assert load_raw(cfg, seed=0).items.column("item_id").to_pylist() == ["a", "b", "c"]


def test_recbole_undecodable_and_wrong_width_rows(tmp_path):
    cfg = _recbole(tmp_path, INTER.replace(b"u\tb\t2", b"u\t\xff\xfe\t2"))
    with pytest.raises(DataError, match=r"toy\.inter:3: bytes that are not UTF-8"):
        load_raw(cfg, seed=0)
    cfg.drop_bad_rows = True
    assert load_raw(cfg, seed=0).dropped == {"undecodable_lines": 1}
    other = tmp_path / "other"
    other.mkdir()
    cfg = _recbole(other, INTER + b"v\ta\n")
    with pytest.raises(DataError, match=r"toy\.inter:5: expected 3 tab-separated fields, found 2"):
        load_raw(cfg, seed=0)
    cfg.drop_bad_rows = True
    raw = load_raw(cfg, seed=0)
    assert raw.dropped == {"malformed_lines": 1} and raw.interactions.num_rows == 3


@pytest.mark.parametrize("value", [b"nan", b"inf", b"1e400", b"soon"])
def test_recbole_timestamp_that_is_not_a_number_names_the_line(tmp_path, value):
    cfg = _recbole(tmp_path, INTER.replace(b"\t2\n", b"\t" + value + b"\n"))
    with pytest.raises(DataError, match=r"toy\.inter:3: field 'timestamp'"):
        load_raw(cfg, seed=0)


def test_a_folder_where_a_file_should_be(tmp_path):
    cfg = _jsonl(tmp_path, _lines(ITEMS), _lines(SEQUENCES))
    (tmp_path / "items.jsonl").unlink()
    (tmp_path / "items.jsonl").mkdir()
    with pytest.raises(DataError, match=r"items\.jsonl: is a folder; expected a file"):
        load_raw(cfg, seed=0)


def test_a_pipe_where_a_file_should_be_is_refused_without_blocking(tmp_path):
    cfg = _jsonl(tmp_path, _lines(ITEMS), _lines(SEQUENCES))
    (tmp_path / "items.jsonl").unlink()
    os.mkfifo(tmp_path / "items.jsonl")
    with pytest.raises(DataError, match=r"items\.jsonl: is not a regular file"):
        load_raw(cfg, seed=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file(tmp_path):
    cfg = _jsonl(tmp_path, _lines(ITEMS), _lines(SEQUENCES))
    (tmp_path / "sequences.jsonl").chmod(0)
    try:
        with pytest.raises(DataError, match=r"sequences\.jsonl: cannot be opened"):
            load_raw(cfg, seed=0)
    finally:
        (tmp_path / "sequences.jsonl").chmod(0o644)


BAD_ITEM_FIELDS = [
    ({"item_id": {"x": 1}}, "item_id"),
    ({"item_id": True}, "item_id"),
    ({"item_id": "b", "categories": {"a": 1}}, "categories"),
    ({"item_id": "b", "categories": [1, {"a": 1}]}, "categories"),
    ({"item_id": "b", "image_uri": 7}, "image_uri"),
]


@pytest.mark.parametrize("record,field", BAD_ITEM_FIELDS)
def test_item_fields_of_the_wrong_type_name_line_and_field_or_are_dropped(tmp_path, record, field):
    cfg = _jsonl(tmp_path, _lines([ITEMS[0], record, ITEMS[2]]), _lines([{"user_id": "u", "item_ids": ["a", "c"]}]))
    with pytest.raises(DataError, match=rf"items\.jsonl:2: field '{field}'"):
        load_raw(cfg, seed=0)
    cfg.drop_bad_rows = True
    raw = load_raw(cfg, seed=0)
    assert raw.dropped == {"bad_field_lines": 1} and raw.items.num_rows == 2


@pytest.mark.parametrize("review,field", [
    ({"reviewerID": ["u"], "asin": "a", "unixReviewTime": 1}, "reviewerID"),
    ({"reviewerID": "u", "asin": "a", "unixReviewTime": 1e300}, "unixReviewTime"),
    ({"reviewerID": "u", "asin": "a", "unixReviewTime": "yesterday"}, "unixReviewTime"),
    ({"reviewerID": "u", "asin": "a", "unixReviewTime": None}, "unixReviewTime"),
])
def test_review_fields_of_the_wrong_type(tmp_path, review, field):
    reviews = _lines(REVIEWS[:1]) + json.dumps(review).encode() + b"\n" + _lines(REVIEWS[1:])
    cfg = _amazon(tmp_path, _lines(META), reviews, gz=False)
    with pytest.raises(DataError, match=rf"X_5\.json:2: (missing )?field '{field}'"):
        load_raw(cfg, seed=0)


def test_amazon_infinity_timestamp(tmp_path):
    reviews = _lines(REVIEWS) + b'{"reviewerID": "u", "asin": "a", "unixReviewTime": Infinity}\n'
    cfg = _amazon(tmp_path, _lines(META), reviews, gz=False)
    with pytest.raises(DataError, match=r"X_5\.json:4: field 'unixReviewTime'"):
        load_raw(cfg, seed=0)


def test_sequence_item_ids_that_are_not_ids(tmp_path):
    cfg = _jsonl(tmp_path, _lines(ITEMS), _lines([SEQUENCES[0], {"user_id": "v", "item_ids": ["a", ["b"]]}]))
    with pytest.raises(DataError, match=r"sequences\.jsonl:2: field 'item_ids'"):
        load_raw(cfg, seed=0)


def test_prepare_exits_2_with_one_line_and_commits_nothing(ray_cluster, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    cfg = _amazon(data, _lines(META * 50), _lines(REVIEWS))
    (data / "X_5.json.gz").write_bytes((data / "X_5.json.gz").read_bytes()[:-6])
    run = tmp_path / "run"
    code = prepare.main(["--set", "data.loader=amazon", "--set", f"data.path={cfg.path}",
                         "--set", f"data.meta_path={cfg.meta_path}", "--set", "data.kcore=1", "--run", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in err if "error" in line] == [err[-1]] and "X_5.json.gz:" in err[-1] and "Traceback" not in "".join(err)
    assert not (run / "manifest" / "prepare.json").exists()
    assert not list((run / "prepare").glob("*/*")), "a failed attempt must leave no output behind"
