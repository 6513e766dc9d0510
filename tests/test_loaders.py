import gzip
import json

import pyarrow.compute as pc
import pytest

from deepinterestgr.config import DataConfig
from deepinterestgr.data.registry import load_raw
from deepinterestgr.errors import DataError


def _stats(raw):
    return (
        pc.count_distinct(raw.interactions.column("user_id")).as_py(),
        raw.items.num_rows,
        raw.interactions.num_rows,
    )


def test_recbole_ml100k_counts(shared_data):
    raw = load_raw(DataConfig(loader="recbole", path=str(shared_data / "ml-100k")), seed=0)
    assert _stats(raw) == (943, 1682, 100_000)
    toy_story = raw.items.filter(pc.equal(raw.items.column("item_id"), "1")).to_pylist()[0]
    assert toy_story["title"] == "Toy Story"
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    assert "1995" in toy_story["description"]
    assert raw.order_source == "timestamp"


def test_jsonl_amazon_office_counts(shared_data):
    raw = load_raw(DataConfig(loader="jsonl", path=str(shared_data / "amazon-office")), seed=0)
    assert _stats(raw) == (3231, 3459, 21_802)
    descriptions = raw.items.column("description").to_pylist()
    assert not any("<!--" in d or "font-family" in d for d in descriptions), "HTML/CSS must be stripped"
    first = raw.interactions.filter(pc.equal(raw.interactions.column("user_id"), "A0"))
    assert first.column("item_id").to_pylist() == ["0", "0", "1", "2", "3"]
    assert first.column("timestamp").to_pylist() == [0, 1, 2, 3, 4]


def _write_lines(path, lines, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_amazon_2014_python_literal_meta_gz(tmp_path):
    meta = tmp_path / "meta_Office_Products.json.gz"
    reviews = tmp_path / "reviews_Office_Products_5.json.gz"
    _write_lines(
        meta,
        [
            str({"asin": "B1", "title": "Stapler", "description": "Red <b>stapler</b>", "imUrl": "http://x/1.jpg",
                 "categories": [["Office Products", "Staplers"]], "brand": "Swingline"}),
            str({"asin": "B2", "title": "Pens", "categories": [["Office Products", "Pens"]]}),
        ],
        gz=True,
    )
    _write_lines(
        reviews,
        [json.dumps({"reviewerID": "U1", "asin": a, "overall": 5.0, "unixReviewTime": t}) for a, t in [("B1", 20), ("B2", 10)]],
        gz=True,
    )
    raw = load_raw(DataConfig(loader="amazon", path=str(reviews), meta_path=str(meta)), seed=0)
    items = {row["item_id"]: row for row in raw.items.to_pylist()}
    assert items["B1"]["description"] == "Red stapler"
    assert items["B1"]["categories"] == ["Office Products", "Staplers"]
    assert items["B1"]["image_uri"] == "http://x/1.jpg"
    assert raw.interactions.column("timestamp").to_pylist() == [20, 10]


def test_amazon_2018_json_meta(tmp_path):
    meta, reviews = tmp_path / "meta.json", tmp_path / "Office_Products_5.json"
    _write_lines(meta, [json.dumps({"asin": "A", "title": "Desk lamp", "description": ["Bright", "LED"],
                                    "category": ["Office Products", "Lamps"], "imageURLHighRes": ["http://i/a.jpg"]})])
    _write_lines(reviews, [json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": 5})])
    raw = load_raw(DataConfig(loader="amazon", path=str(reviews), meta_path=str(meta)), seed=0)
    item = raw.items.to_pylist()[0]
    assert (item["description"], item["categories"], item["image_uri"]) == (
        "Bright LED", ["Office Products", "Lamps"], "http://i/a.jpg")


def _jsonl_folder(tmp_path, items, sequences):
    _write_lines(tmp_path / "items.jsonl", items)
    _write_lines(tmp_path / "sequences.jsonl", sequences)
    return DataConfig(loader="jsonl", path=str(tmp_path))


def test_malformed_line_names_file_and_line(tmp_path):
    cfg = _jsonl_folder(tmp_path, ['{"item_id": "1", "title": "a"}', '{"item_id": 2, "title": '],
                        ['{"user_id": "u", "item_ids": ["1"]}'])
    with pytest.raises(DataError, match=r"items.jsonl:2: malformed JSON"):
        load_raw(cfg, seed=0)


def test_bad_rows_are_dropped_and_counted_when_allowed(tmp_path):
    cfg = _jsonl_folder(tmp_path, ['{"item_id": "1"}', "not json", '{"item_id": "2"}'],
                        ['{"user_id": "u", "item_ids": ["1", "9", "2", "9"]}'])
    cfg.drop_bad_rows = True
    raw = load_raw(cfg, seed=0)
    assert raw.dropped == {"malformed_lines": 1, "unknown_item_interactions": 2}
    assert raw.interactions.column("item_id").to_pylist() == ["1", "2"]


def test_unknown_items_are_an_error_by_default(tmp_path):
    cfg = _jsonl_folder(tmp_path, ['{"item_id": "1"}'], ['{"user_id": "u", "item_ids": ["1", "404"]}'])
    with pytest.raises(DataError, match=r"sequences.jsonl: 1 interaction.*\['404'\]"):
        load_raw(cfg, seed=0)


def test_missing_field_and_duplicate_ids(tmp_path):
    cfg = _jsonl_folder(tmp_path, ['{"title": "no id"}'], ['{"user_id": "u", "item_ids": []}'])
    with pytest.raises(DataError, match=r"items.jsonl:1: missing field 'item_id'"):
        load_raw(cfg, seed=0)
    cfg = _jsonl_folder(tmp_path, ['{"item_id": "1"}', '{"item_id": "1"}'], ['{"user_id": "u", "item_ids": ["1"]}'])
    with pytest.raises(DataError, match="duplicate item_id"):
        load_raw(cfg, seed=0)


def test_recbole_missing_column_names_file(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text("user:token\titem_id:token\n1\t2\n")
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\n2\tThing\n")
    with pytest.raises(DataError, match=r"toy.inter: missing column 'user_id'"):
        load_raw(DataConfig(loader="recbole", path=str(folder)), seed=0)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_raw(DataConfig(loader="jsonl", path=str(tmp_path / "nowhere")), seed=0)
    with pytest.raises(DataError, match="data.path"):
        load_raw(DataConfig(loader="recbole"), seed=0)
